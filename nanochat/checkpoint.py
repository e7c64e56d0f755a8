"""Checkpoints: model + optimizer + data position + run curves, written atomically.

A checkpoint is a ``torch.save`` dict loaded back with ``weights_only=True`` (plain tensors and
Python values only, never arbitrary pickles), after ``fusedgate.files.check_regular_file`` has refused a
FIFO, a device or a folder (``torch.load`` would block or read forever) and a file over
``MAX_CHECKPOINT_BYTES``. A refused file is one line with torch's whole reason (its warnings are caught:
the error says why). It is written with ``fusedgate.files.write_atomic``
(a temporary file in the same folder, fsynced, then renamed), so an interrupted save never replaces
the last good checkpoint.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from fusedgate.files import ReadError, check_regular_file, write_atomic
from fusedgate.nanochat.errors import TrainError

FORMAT = "fusedgate.nanochat/1"
FILENAME = "checkpoint.pt"
MAX_CHECKPOINT_BYTES = 256 << 30  # d20 with its optimizer state is a few GiB
# what ``train`` writes and a resume reads; a checkpoint missing any of them is refused by name
REQUIRED_KEYS = ("step", "total_steps", "model_state", "optimizer_state", "wall_s", "first_step_s", "val_curve",
                 "train_curve", "gate_trajectory", "config", "model_config", "optimizer", "spec", "seed", "corpus",
                 "tokenizer", "lr_scale")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda fh: torch.save({"format": FORMAT, **payload}, fh))


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt``; a regular file (stat, not opened)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / FILENAME
    if not p.exists() and not p.is_symlink():
        raise TrainError(f"no checkpoint at {path}")
    try:
        check_regular_file(p, "checkpoint", MAX_CHECKPOINT_BYTES)
    except ReadError as exc:
        raise TrainError(str(exc)) from None
    return p


def one_line_reason(exc: BaseException, limit: int = 400) -> str:
    """``exc``'s whole message on one line (torch's are several), cut only past ``limit`` characters;
    torch's weights-only refusal is reduced to its cause (not its advice to load the file unsafely)."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        cause = text.split(marker, 1)[1]
        for advice in (" Check the documentation", " Please use `torch.serialization"):
            cause = cause.split(advice)[0]
        text = f"torch's weights-only loader refused it: {cause.strip()}"
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = resolve(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses; the error says why
            warnings.simplefilter("ignore")
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, foreign object types, ...
        what = "" if zipfile.is_zipfile(p) else "not a torch.save zip archive (a raw pickle or another format); "
        raise TrainError(f"checkpoint {p} is corrupt or not a fusedgate checkpoint ({what}"
                         f"{one_line_reason(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TrainError(f"checkpoint {p} is not a {FORMAT} checkpoint")
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise TrainError(f"checkpoint {p} is incomplete: it lacks {', '.join(missing)}")
    total, step = ckpt["total_steps"], ckpt["step"]
    if not (_is_int(total) and _is_int(step) and 0 <= step <= total) or not isinstance(ckpt["config"], dict):
        raise TrainError(f"checkpoint {p} is damaged: step={_short(step)}, total_steps={_short(total)}, "
                         f"config of type {type(ckpt['config']).__name__}")
    return ckpt


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_compatible(ckpt: dict[str, Any], path: str | Path, expected: dict[str, Any]) -> None:
    """Each key of ``expected`` (model config, optimizer, seed, corpus, ...) must match the checkpoint."""
    for key, want in expected.items():
        have = ckpt.get(key)
        if have != want:
            what = "another model" if key == "model_config" else f"a run with a different {key}"
            raise TrainError(f"checkpoint {path} is from {what}: it has {key}={_short(have)}, "
                             f"this run needs {_short(want)}")


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

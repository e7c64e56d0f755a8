"""Checkpoints: model + optimizer + data position + run curves, written atomically.

A checkpoint is a ``torch.save`` dict loaded back with ``weights_only=True`` (plain tensors and
Python values only, never arbitrary pickles). It is written with ``fusedgate.files.write_atomic``
(a temporary file in the same folder, fsynced, then renamed), so an interrupted save never replaces
the last good checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fusedgate.files import write_atomic
from fusedgate.nanochat.errors import TrainError

FORMAT = "fusedgate.nanochat/1"
FILENAME = "checkpoint.pt"
# what ``train`` writes and a resume reads; a checkpoint missing any of them is refused by name
REQUIRED_KEYS = ("step", "total_steps", "model_state", "optimizer_state", "wall_s", "first_step_s", "val_curve",
                 "train_curve", "gate_trajectory", "config", "model_config", "optimizer", "spec", "seed", "corpus",
                 "tokenizer", "lr_scale")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda fh: torch.save({"format": FORMAT, **payload}, fh))


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        raise TrainError(f"no checkpoint at {path}")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = resolve(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, foreign object types, ...
        detail = str(exc).strip().splitlines()[0][:60] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        raise TrainError(f"checkpoint {p} is corrupt or not a fusedgate checkpoint ({reason})") from None
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

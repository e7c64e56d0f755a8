"""The JSONL metrics log. Every record carries ``type``, ``step`` and the corpus fingerprint.

Record types: ``config`` (once per run start/resume), ``train`` (loss, lr multiplier, tokens/s,
step time, cumulative training wall time), ``val`` (val bpb), ``gate`` (FusedGate's per-param
gate, actuators and sensors), ``result`` (the final summary).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fusedgate.files import ReadError, WriteError, read_text, write_atomic
from fusedgate.nanochat.errors import TrainError

FILENAME = "metrics.jsonl"
MAX_METRICS_BYTES = 16 << 30  # a long d20 run with gate records logs a few hundred MiB


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    def __init__(self, out_dir: str | Path | None, fingerprint: str, resume_step: int | None = None):
        self.fingerprint = fingerprint
        self.path = Path(out_dir) / FILENAME if out_dir is not None else None
        if self.path is not None and resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records logged after the checkpoint's step (they will be redone). The log is read with
        ``fusedgate.files.read_text``: a FIFO or a device in its place is a TrainError, not a hang."""
        try:
            text = read_text(self.path, "metrics log", MAX_METRICS_BYTES)
        except ReadError as exc:
            raise TrainError(f"{exc} (move it away to resume with a fresh log)") from None
        kept = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("type") in ("train", "gate") and record.get("step", 0) >= step:
                continue
            if record.get("type") == "val" and record.get("step", 0) > step or record.get("type") == "result":
                continue
            kept.append(line)
        write_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, type_: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"type": type_, **_clean(fields), "corpus": self.fingerprint}
        try:
            with open(self.path, "a", encoding="utf-8") as fh:  # appended: one line per record
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot append to {self.path}: {exc.strerror}") from None


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]

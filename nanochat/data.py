"""Corpora, the train/val split, the fingerprint and deterministic batches.

A corpus is a list of documents ``(key, bytes)``:

* default: every ``*.py`` file of the running interpreter's standard library (no download);
* ``--data DIR`` with ``*.parquet`` files: one document per row of the ``text`` column
  (nanochat/FineWeb shards), key ``file#row``;
* ``--data DIR`` otherwise: every non-binary file below DIR, key = relative path;
* ``--data FILE``: a ``.parquet`` shard as above; any other file cut into 16 KiB pieces, key ``name#i``.
  A binary file (a NUL byte in its first 8 KiB, the test that skips binary files in a folder) is refused,
  and so is a FIFO, a device or a socket, by ``os.stat`` before it is opened (``fusedgate.files``).

Split: a document is in val iff ``int(sha256(key)[:8 hex]) % 1000 < VAL_PERMILLE``, so the split
depends on the key only (stable when files are added) and train/val never share a document.
Fingerprint: sha256 over the sorted (key, content) pairs, recorded with every result so that runs
on different corpora are not compared by mistake.

Tokens: each document becomes [BOS] + tokens; a split is the concatenation in key order.
Training batches are B random windows of T+1 tokens drawn with ``default_rng([seed, step])`` —
a pure function of (seed, step), so the data position is the step and resume is exact.
Validation uses the first ``eval_tokens`` of the val stream cut into consecutive windows.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusedgate.files import ReadError, check_regular_file, read_bytes
from fusedgate.nanochat.errors import TrainError
from fusedgate.nanochat.tokenizer import make_tokenizer

VAL_PERMILLE = 50  # 5% of documents go to validation
FILE_PIECE_BYTES = 16 * 1024
BPE_TRAIN_BYTES = 8 * 1024 * 1024  # the BPE is trained on at most this much train text


def is_val_key(key: str) -> bool:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 1000 < VAL_PERMILLE


def stdlib_documents() -> tuple[str, list[tuple[str, bytes]]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                docs.append((path.relative_to(root).as_posix(), path.read_bytes()))
    version = ".".join(map(str, sys.version_info[:3]))
    return f"stdlib-py{version}", docs


def _parquet_documents(files: list[Path], root: Path, max_bytes: int) -> list[tuple[str, bytes]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TrainError("reading parquet shards needs pyarrow: pip install 'fusedgate[data]'") from None
    docs, total = [], 0
    for path in files:
        try:
            table = pq.read_table(path, columns=["text"])
        except Exception as exc:  # pyarrow raises several types for bad files / missing columns
            raise TrainError(f"cannot read a 'text' column from {path}: {str(exc).splitlines()[0]}") from None
        for i, text in enumerate(table.column("text").to_pylist()):
            if not text:
                continue
            data = text.encode("utf-8")
            docs.append((f"{path.relative_to(root).as_posix()}#{i}", data))
            total += len(data)
            if total >= max_bytes:
                return docs
    return docs


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:8192]


def _folder_documents(root: Path, max_bytes: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts))
    parquet = [p for p in files if p.suffix == ".parquet"]
    if parquet:
        return _parquet_documents(parquet, root, max_bytes)
    docs, total = [], 0
    for path in files:
        data = _read_file(path, max_bytes - total)
        if not data or _is_binary(data):
            continue
        docs.append((path.relative_to(root).as_posix(), data))
        total += len(data)
        if total >= max_bytes:
            break
    return docs


def _read_file(path: Path, max_bytes: int) -> bytes:
    """The first ``max_bytes`` of a regular file (a FIFO or a device is refused unopened: it could block)."""
    try:
        return read_bytes(path, "data file", max_bytes, truncate=True)
    except ReadError as exc:
        raise TrainError(str(exc)) from None


def _check_data_path(path: str, p: Path) -> None:
    """A data path is a regular file or a folder: a FIFO, a device or a socket is refused before it is opened."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise TrainError(f"data path {path} does not exist") from None
    except OSError as exc:
        raise TrainError(f"cannot read data path {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        try:
            check_regular_file(p, "data path")
        except ReadError as exc:
            raise TrainError(f"{exc} (a text file, a parquet file or a folder)") from None


def load_documents(path: str | None, max_bytes: int) -> tuple[str, list[tuple[str, bytes]]]:
    """(label, documents) for the default corpus (path None) or a user path."""
    if path is None:
        return stdlib_documents()
    p = Path(path).expanduser()
    _check_data_path(path, p)
    if p.is_file() and p.suffix == ".parquet":
        docs = _parquet_documents([p], p.parent, max_bytes)
    elif p.is_file():
        data = _read_file(p, max_bytes)
        if _is_binary(data):
            raise TrainError(f"data file {path} is binary (a NUL byte in its first 8 KiB): pass a text file, "
                             "a folder (binary files in it are skipped) or a folder of parquet shards")
        docs = [(f"{p.name}#{i}", data[s:s + FILE_PIECE_BYTES])
                for i, s in enumerate(range(0, len(data), FILE_PIECE_BYTES))]
    else:
        docs = _folder_documents(p, max_bytes)
    if not docs:
        raise TrainError(f"data path {path} holds no text")
    return p.resolve().name, docs


def fingerprint(docs: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256(f"split:{VAL_PERMILLE}/1000;".encode())
    for key, data in sorted(docs):
        h.update(key.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


@dataclass
class TokenData:
    train: np.ndarray          # uint16 token stream
    val: np.ndarray
    token_bytes: np.ndarray    # (vocab,) bytes per token, 0 for BOS
    vocab_size: int
    tokenizer: str
    fingerprint: str           # "<label>:<16 hex>"
    n_train_docs: int
    n_val_docs: int


def _encode_stream(docs: list[tuple[str, bytes]], tokenizer) -> np.ndarray:
    pieces = []
    for _, data in docs:
        pieces.append(np.array([tokenizer.bos], dtype=np.uint16))
        pieces.append(tokenizer.encode(data))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


@functools.lru_cache(maxsize=4)
def load_data(path: str | None, tokenizer: str = "byte", max_bytes: int = 256 * 1024 * 1024) -> TokenData:
    """Load, split, fingerprint and tokenize a corpus (cached per process)."""
    label, docs = load_documents(path, max_bytes)
    docs.sort()
    train_docs = [d for d in docs if not is_val_key(d[0])]
    val_docs = [d for d in docs if is_val_key(d[0])]

    def bpe_texts():
        used = 0
        for _, data in train_docs:
            if used >= BPE_TRAIN_BYTES:
                return
            used += len(data)
            yield data.decode("utf-8", errors="replace")

    tok = make_tokenizer(tokenizer, bpe_texts())
    return TokenData(train=_encode_stream(train_docs, tok), val=_encode_stream(val_docs, tok),
                     token_bytes=tok.token_bytes, vocab_size=tok.vocab_size, tokenizer=tok.name,
                     fingerprint=f"{label}:{fingerprint(docs)}", n_train_docs=len(train_docs),
                     n_val_docs=len(val_docs))


def check_size(data: TokenData, seq_len: int, where: str) -> None:
    """A clear error when a split cannot fill even one window of seq_len + 1 tokens."""
    for split, stream in (("train", data.train), ("val", data.val)):
        if len(stream) < seq_len + 2:
            raise TrainError(f"corpus {where} is too small for context length {seq_len}: its {split} split has "
                             f"{len(stream)} tokens, needs at least {seq_len + 2} (5% of documents go to val)")


def train_batch(data: TokenData, seed: int, step: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, ...]:
    """B random windows (inputs, targets), a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data.train) - seq_len, size=batch_size)
    windows = data.train[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)
    t = torch.from_numpy(windows)
    return t[:, :-1], t[:, 1:]


def val_batches(data: TokenData, batch_size: int, seq_len: int, eval_tokens: int) -> list[tuple[torch.Tensor, ...]]:
    """The first ``eval_tokens`` of the val stream as consecutive (inputs, targets) windows."""
    n_windows = max(1, min(eval_tokens // seq_len, (len(data.val) - 1) // seq_len))
    starts = np.arange(n_windows) * seq_len
    t = torch.from_numpy(data.val[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
    return [(t[i:i + batch_size, :-1], t[i:i + batch_size, 1:]) for i in range(0, n_windows, batch_size)]


def val_batches_spread(data: TokenData, batch_size: int, seq_len: int,
                       eval_tokens: int) -> list[tuple[torch.Tensor, ...]]:
    """``eval_tokens`` of val as windows spaced evenly over the whole val stream (all of it when
    eval_tokens covers it): for a given budget this samples every val document region, where the
    prefix of ``val_batches`` covers only the first few documents in key order."""
    total = (len(data.val) - 1) // seq_len
    n_windows = max(1, min(eval_tokens // seq_len, total))
    starts = (np.arange(n_windows) * total // n_windows) * seq_len
    t = torch.from_numpy(data.val[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
    return [(t[i:i + batch_size, :-1], t[i:i + batch_size, 1:]) for i in range(0, n_windows, batch_size)]

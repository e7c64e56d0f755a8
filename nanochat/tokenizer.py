"""Tokenizers: raw bytes (default) or a BPE trained with ``rustbpe`` and run through ``tiktoken``.

Each tokenizer has one special token, BOS, placed before every document. ``token_bytes[i]`` is
the number of UTF-8 bytes token i stands for (0 for BOS), which turns a summed loss in nats into
bits per byte: bpb = Σ nats / (ln 2 · Σ token_bytes[target]).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fusedgate.nanochat.errors import TrainError


class ByteTokenizer:
    """Token i < 256 is byte i; token 256 is BOS."""

    name = "byte"
    vocab_size = 257
    bos = 256

    def __init__(self):
        self.token_bytes = np.ones(self.vocab_size, dtype=np.int64)
        self.token_bytes[self.bos] = 0

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)


class BPETokenizer:
    """A GPT-4-style BPE (rustbpe's split pattern) with ``vocab_size`` tokens including BOS."""

    def __init__(self, texts: Iterable[str], vocab_size: int):
        try:
            import rustbpe
            import tiktoken
        except ImportError as exc:
            raise TrainError(f"the BPE tokenizer needs rustbpe and tiktoken ({exc.name} is missing): "
                             "pip install 'fusedgate[data]'") from None
        if not 260 <= vocab_size <= 65535:
            raise TrainError(f"BPE vocab size must be in [260, 65535], got {vocab_size}")
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts), vocab_size - 1)  # the last id is BOS
        ranks = dict(trainer.get_mergeable_ranks())
        self.bos = len(ranks)
        self.vocab_size = self.bos + 1
        self.name = f"bpe{self.vocab_size}"
        self._encoding = tiktoken.Encoding(self.name, pat_str=trainer.get_pattern(), mergeable_ranks=ranks,
                                           special_tokens={"<|bos|>": self.bos})
        self.token_bytes = np.zeros(self.vocab_size, dtype=np.int64)
        for token, rank in ranks.items():
            self.token_bytes[rank] = len(token)

    def encode(self, data: bytes) -> np.ndarray:
        text = data.decode("utf-8", errors="replace")
        return np.asarray(self._encoding.encode_ordinary(text), dtype=np.uint16)


def make_tokenizer(name: str, train_texts: Iterable[str] | None = None) -> ByteTokenizer | BPETokenizer:
    """``"byte"`` or ``"bpe:N"`` (a BPE with N tokens, trained on ``train_texts``)."""
    if name == "byte":
        return ByteTokenizer()
    if name.startswith("bpe:"):
        try:
            size = int(name[4:])
        except ValueError:
            raise TrainError(f"tokenizer {name!r}: expected 'bpe:N' with N an integer") from None
        return BPETokenizer(train_texts or [], size)
    raise TrainError(f"unknown tokenizer {name!r}: use 'byte' or 'bpe:N'")

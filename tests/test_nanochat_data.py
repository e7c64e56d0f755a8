"""NanoChat data: the stdlib corpus split, fingerprints, deterministic batches, bits per byte."""

import math

import numpy as np
import pytest
import torch

from fusedgate.nanochat.data import (
    check_size,
    fingerprint,
    is_val_key,
    load_data,
    load_documents,
    train_batch,
    val_batches,
)
from fusedgate.nanochat.errors import TrainError
from fusedgate.nanochat.model import GPT, GPTConfig
from fusedgate.nanochat.tokenizer import make_tokenizer
from fusedgate.nanochat.train import evaluate_bpb


def write_folder(root, n_files=80, size=600, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "class", "import", "self", "value"]
    for i in range(n_files):
        sub = root / f"d{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(words, size // 6)) + "\n"
        (sub / f"file{i}.txt").write_text(text)
    return root


def test_stdlib_split_disjoint_and_deterministic():
    label, docs = load_documents(None, 10**12)
    assert label.startswith("stdlib-py")
    keys = [k for k, _ in docs]
    assert len(keys) == len(set(keys)) > 100
    val = {k for k in keys if is_val_key(k)}
    train = set(keys) - val
    assert val and train and not (val & train)
    assert 0.02 < len(val) / len(keys) < 0.09  # ~5% of files
    # the rule depends on the key only
    assert [is_val_key(k) for k in keys] == [is_val_key(k) for k in keys]
    assert fingerprint(docs) == fingerprint(list(reversed(docs)))
    data = load_data(None)
    assert data.n_val_docs == len(val) and data.n_train_docs == len(train)
    assert data.fingerprint == f"{label}:{fingerprint(docs)}"
    # byte tokens: the streams are the documents' bytes with a BOS before each document
    assert len(data.train) == sum(len(b) + 1 for k, b in docs if k in train)
    assert int((data.val == 256).sum()) == len(val)


def test_folder_split_and_fingerprint_changes_with_content(tmp_path):
    root = write_folder(tmp_path / "corpus")
    a = load_data(str(root))
    assert a.fingerprint.startswith("corpus:")
    assert a.n_train_docs + a.n_val_docs == 80
    (root / "d0" / "file0.txt").write_text("changed\n" * 50)
    load_data.cache_clear()
    b = load_data(str(root))
    assert a.fingerprint != b.fingerprint


def test_batches_are_deterministic_shifted_windows():
    data = load_data(None)
    x, y = train_batch(data, seed=3, step=7, batch_size=4, seq_len=32)
    x2, y2 = train_batch(data, seed=3, step=7, batch_size=4, seq_len=32)
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(x, train_batch(data, seed=4, step=7, batch_size=4, seq_len=32)[0])
    assert not torch.equal(x, train_batch(data, seed=3, step=8, batch_size=4, seq_len=32)[0])
    vb = val_batches(data, batch_size=4, seq_len=32, eval_tokens=320)
    assert sum(len(vx) for vx, _ in vb) == 10
    assert torch.equal(vb[0][0][0], torch.from_numpy(data.val[:32].astype(np.int64)))


def test_bits_per_byte_matches_direct_computation():
    """Byte tokens: bpb = mean nats over non-BOS targets / ln 2."""
    data = load_data(None)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_depth(1, 257, 32, aspect_ratio=32, head_dim=16))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batches = val_batches(data, 4, 32, 32 * 8)
    token_bytes = torch.from_numpy(data.token_bytes)
    bpb = evaluate_bpb(model, batches, token_bytes, torch.device("cpu"), lambda: torch.no_grad())
    nats, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logp = torch.log_softmax(model(x), dim=-1).gather(-1, y[..., None])[..., 0]
            keep = y != 256
            nats -= logp[keep].double().sum().item()
            count += int(keep.sum())
    assert bpb == pytest.approx(nats / count / math.log(2), rel=1e-5)


def test_parquet_shards(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [f"document {i}: " + "the quick brown fox " * 20 for i in range(200)]
    pq.write_table(pa.table({"text": rows[:100]}), tmp_path / "shard_00000.parquet")
    pq.write_table(pa.table({"text": rows[100:]}), tmp_path / "shard_00001.parquet")
    data = load_data(str(tmp_path))
    assert data.n_train_docs + data.n_val_docs == 200 and data.n_val_docs > 0
    assert len(data.train) + len(data.val) == sum(len(r) + 1 for r in rows)
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "shard_00002.parquet")
    load_data.cache_clear()
    with pytest.raises(TrainError, match="'text' column"):
        load_data(str(tmp_path))


def test_bpe_tokenizer_counts_bytes(tmp_path):
    pytest.importorskip("rustbpe")
    pytest.importorskip("tiktoken")
    root = write_folder(tmp_path / "c", n_files=60)
    data = load_data(str(root), "bpe:300")
    assert data.tokenizer == "bpe300" and data.vocab_size == 300
    bos = data.vocab_size - 1
    # every byte of the corpus is covered by exactly one token
    total_bytes = sum(p.stat().st_size for p in root.rglob("*.txt"))
    assert int(data.token_bytes[data.train].sum() + data.token_bytes[data.val].sum()) == total_bytes
    assert data.token_bytes[bos] == 0
    assert len(data.train) + len(data.val) < total_bytes  # merges compress
    tok = make_tokenizer("byte")
    assert tok.encode("é".encode()).tolist() == [0xC3, 0xA9]
    with pytest.raises(TrainError, match="unknown tokenizer"):
        make_tokenizer("wordpiece")


def test_bad_data_paths(tmp_path):
    with pytest.raises(TrainError, match="does not exist"):
        load_data(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match="holds no text"):
        load_data(str(tmp_path / "empty"))
    small = write_folder(tmp_path / "small", n_files=40, size=60)
    with pytest.raises(TrainError, match="too small for context length 4096"):
        check_size(load_data(str(small)), 4096, str(small))

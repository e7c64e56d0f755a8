"""The held-out task family of ``fusedgate brain-eval``: problems OptBrain's defaults were never tuned on.

Written and committed before any tuning of the safety mechanism (see the git history); their seeds are
fixed here (``HELDOUT_SEED_OFFSET``: eval seed s builds problem seed s + 5000, so no seed of this family
coincides with one the tuning tasks or the lr sweep used). Each builder returns a ``tasks.Problem`` for
one seed: init from ``torch.manual_seed``, the data a pure function of the seed, the batch order a pure
function of (seed, step) — every arm with the same seed sees the same init and batches.

* ``logreg`` — multinomial logistic regression on a generated ill-conditioned problem: 64 features
  z·diag(logspace(0, −1.5))·Q with z ~ N(0, I) and Q a random rotation (so the conditioning, ≈ 10³ in
  the Hessian, is not axis-aligned and Adam's diagonal cannot undo it), 8 classes drawn from a random
  linear teacher's softmax; a linear layer (weight, bias groups), batch 128, 300 steps; final loss =
  full-data cross-entropy on the 4096 training points.
* ``cnn`` — a small CNN on generated 12×12 images: 6 classes, each a fixed random smooth prototype,
  every sample shifted by up to ±2 pixels, scaled in contrast by U(0.6, 1.4) and with N(0, 0.5²) pixel
  noise; Conv(1→8, 3×3)–ReLU–MaxPool–Conv(8→16, 3×3)–ReLU–MaxPool–Linear(144→6), one group per layer,
  batch 64, 300 steps; final loss = cross-entropy on 1000 held-out images.
* ``charrnn`` — a character-level recurrent model: byte embedding (256→32), one GRU layer (64 units),
  a linear read-out (64→256) on the NanoChat default corpus (the Python standard library, byte
  tokens), context 32, batch 16, 300 steps; final loss = validation bits per byte on 4096 tokens.

Learning rates (``LR``) and schedule peaks (``PEAK``) were chosen for the *base* optimizer only, by a
coarse ×3 sweep (lr × 1/9 … 9 around a first guess, extended where the best was at an edge; peaks ×1,
×2, ×3) on seeds 100 and 101 (never an evaluation seed), before any brain run on this family. The cnn
data were made harder (noise 0.5 → 1.5, contrast U(0.3, 1.5)) after a first base run reached a loss of
0.00 with FusedGate; nothing else was changed after seeing a result.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

HELDOUT_TASKS = ("logreg", "cnn", "charrnn")
HELDOUT_SEED_OFFSET = 5000
# (task, optimizer) -> tuned constant lr of the base optimizer (best of a ×3 sweep on seeds 100, 101)
LR = {("logreg", "sgd"): 1.0, ("logreg", "adamw"): 0.09, ("logreg", "fusedgate"): 0.09,
      ("cnn", "sgd"): 0.01, ("cnn", "adamw"): 3e-3, ("cnn", "fusedgate"): 3e-3,
      ("charrnn", "sgd"): 0.3, ("charrnn", "adamw"): 0.01, ("charrnn", "fusedgate"): 0.03}
# (task, optimizer) -> the warmup + warmdown schedule's peak lr as a multiple of LR (best of ×1, ×2, ×3)
PEAK = {("logreg", "sgd"): 3.0, ("logreg", "adamw"): 3.0, ("logreg", "fusedgate"): 3.0,
        ("cnn", "sgd"): 1.0, ("cnn", "adamw"): 2.0, ("cnn", "fusedgate"): 3.0,
        ("charrnn", "sgd"): 2.0, ("charrnn", "adamw"): 3.0, ("charrnn", "fusedgate"): 1.0}


def _groups(modules, task: str, adamw_kind: tuple[int, ...] = ()) -> dict[str, list[dict]]:
    """Param groups per optimizer, one per module; ``adamw_kind``: modules FusedGate runs as AdamW."""
    out = {}
    for opt in ("sgd", "adamw", "fusedgate"):
        lr = LR[(task, opt)]
        extra = {"momentum": 0.9} if opt == "sgd" else {}
        out[opt] = [{"params": list(m.parameters()), "lr": lr, **extra,
                     **({"kind": "adamw"} if opt == "fusedgate" and i in adamw_kind else {})}
                    for i, m in enumerate(modules)]
    return out


def _logreg(seed: int):
    from fusedgate.brain.tasks import Problem

    seed += HELDOUT_SEED_OFFSET
    gen = np.random.default_rng([seed, 21])
    n, d, k = 4096, 64, 8
    q, _ = np.linalg.qr(gen.standard_normal((d, d)))
    x = gen.standard_normal((n, d)) * np.logspace(0, -1.5, d) @ q
    logits = x @ (3.0 * gen.standard_normal((d, k)))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > gen.random((n, 1))).argmax(axis=1)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(seed)
    model = torch.nn.Linear(d, k)

    def loss_at(step):
        idx = torch.from_numpy(np.random.default_rng([seed, 22, step]).integers(0, n, 128))
        return F.cross_entropy(model(x[idx]), y[idx])

    def evaluate():
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    groups = {opt: [dict(g, params=[model.weight]), dict(g, params=[model.bias])]
              for opt, (g,) in _groups([model], "logreg").items()}
    return Problem(model, groups, loss_at, evaluate, steps=300)


def images(seed: int, n: int, classes: int = 6, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated images (N, 1, size, size) and labels: shifted, contrast-scaled, noisy prototypes."""
    protos = np.random.default_rng(4242).standard_normal((classes, size + 4, size + 4))
    kernel = np.outer(*(2 * [np.array([1.0, 2.0, 1.0]) / 4.0]))
    for _ in range(2):                                   # smooth: a 3×3 binomial blur, twice
        padded = np.pad(protos, ((0, 0), (1, 1), (1, 1)), mode="edge")
        protos = sum(kernel[i, j] * padded[:, i:i + size + 4, j:j + size + 4] for i in range(3) for j in range(3))
    protos /= protos.std(axis=(1, 2), keepdims=True)
    gen = np.random.default_rng([seed, 31, n])
    label = gen.integers(0, classes, n)
    dx, dy = gen.integers(0, 5, n), gen.integers(0, 5, n)
    crops = np.stack([protos[c, a:a + size, b:b + size] for c, a, b in zip(label, dx, dy)])
    x = crops * gen.uniform(0.3, 1.5, (n, 1, 1)) + 1.5 * gen.standard_normal((n, size, size))
    return torch.tensor(x[:, None], dtype=torch.float32), torch.tensor(label)


def _cnn(seed: int):
    from fusedgate.brain.tasks import Problem

    seed += HELDOUT_SEED_OFFSET
    x, y = images(seed, 2000)
    x_test, y_test = images(seed + 1, 1000)
    torch.manual_seed(seed)
    conv1, conv2, head = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 16, 3, padding=1), \
        torch.nn.Linear(144, 6)
    model = torch.nn.Sequential(conv1, torch.nn.ReLU(), torch.nn.MaxPool2d(2), conv2, torch.nn.ReLU(),
                                torch.nn.MaxPool2d(2), torch.nn.Flatten(), head)

    def loss_at(step):
        idx = torch.from_numpy(np.random.default_rng([seed, 32, step]).integers(0, len(x), 64))
        return F.cross_entropy(model(x[idx]), y[idx])

    def evaluate():
        with torch.no_grad():
            return float(F.cross_entropy(model(x_test), y_test))

    return Problem(model, _groups([conv1, conv2, head], "cnn"), loss_at, evaluate, steps=300)


class CharGRU(torch.nn.Module):
    """Byte embedding → one GRU layer → linear read-out to the next byte's logits."""

    def __init__(self, vocab: int = 256, embed: int = 32, hidden: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.rnn = torch.nn.GRU(embed, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


def _charrnn(seed: int):
    from fusedgate.brain.tasks import Problem
    from fusedgate.nanochat.data import load_data, train_batch, val_batches
    from fusedgate.nanochat.presets import get_preset

    seed += HELDOUT_SEED_OFFSET
    data = load_data(None, "byte", get_preset("tiny").max_corpus_bytes)
    seq_len, batch = 32, 16
    val = val_batches(data, 64, seq_len, 4096)
    torch.manual_seed(seed)
    model = CharGRU(data.vocab_size)

    def loss_at(step):
        inputs, targets = train_batch(data, seed, step, batch, seq_len)
        return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())

    def evaluate():
        with torch.no_grad():
            nats = [F.cross_entropy(model(i).flatten(0, 1), t.flatten(), reduction="sum").item() for i, t in val]
            return sum(nats) / sum(t.numel() for _, t in val) / math.log(2)

    return Problem(model, _groups([model.embed, model.rnn, model.head], "charrnn", adamw_kind=(0,)),
                   loss_at, evaluate, steps=300)


HELDOUT_BUILDERS = {"logreg": _logreg, "cnn": _cnn, "charrnn": _charrnn}

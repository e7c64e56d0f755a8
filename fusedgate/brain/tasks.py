"""Small real training problems for ``fusedgate brain-eval``: base optimizer vs OptBrain-wrapped.

Each task builds, from a seed, the model (init from ``torch.manual_seed(seed)``), its param groups,
a per-step loss (data order a pure function of (seed, step)) and a final evaluation, so a base run
and a brain run with the same seed see the same init and the same batches (paired comparison).
Learning rates are constant (no schedule) and were chosen for the *base* optimizer by a coarse sweep
before any brain run; the brain has to improve on a reasonably tuned base.

* ``regression`` — ill-conditioned least squares: 32 features scaled by logspace(0, −2) (Hessian
  condition number ≈ 10⁴), y = X·w* + 0.01·noise, a linear layer (weight, bias groups), batch 64,
  final loss = full-data MSE.
* ``mlp`` — a generated 5-arm spiral classification problem in 2-D, embedded in 16-D by a random
  linear map plus noise features; MLP 16→64→64→5 (one group per layer), batch 64, final loss =
  held-out cross-entropy on 1000 points.
* ``nanochat`` — the project's NanoChat GPT (``fusedgate.nanochat``) on its default corpus (the
  Python standard library, byte tokens): depth 1, context 64, batch 16 — smaller than the ``tiny``
  preset so that 5 seeds × 2 optimizers × 2 arms fit in minutes on 2 CPU cores; nanochat's AdamW
  groups (lm_head, wte, matrices); final loss = validation bits per byte on 8192 tokens.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TASKS = ("regression", "mlp", "nanochat")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class Problem:
    model: torch.nn.Module
    groups: dict[str, list[dict]]            # optimizer name -> param groups (with lrs)
    loss_at: Callable[[int], torch.Tensor]   # step -> training loss (builds the graph)
    evaluate: Callable[[], float]            # final loss on held-out / full data
    steps: int


def _regression(seed: int) -> Problem:
    gen = np.random.default_rng([seed, 1])
    n, d = 2048, 32
    x = gen.standard_normal((n, d)) * np.logspace(0, -2, d)
    w_star = gen.standard_normal(d)
    y = x @ w_star + 0.01 * gen.standard_normal(n)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]
    torch.manual_seed(seed)
    model = torch.nn.Linear(d, 1)

    def loss_at(step):
        idx = torch.from_numpy(np.random.default_rng([seed, 2, step]).integers(0, n, 64))
        return F.mse_loss(model(x[idx]), y[idx])

    def groups(lr):
        return [{"params": [model.weight], "lr": lr}, {"params": [model.bias], "lr": lr}]

    return Problem(model, {"sgd": [dict(g, momentum=0.9) for g in groups(0.3)], "adamw": groups(0.03)},
                   loss_at, lambda: F.mse_loss(model(x), y).item(), steps=300)


def spirals(seed: int, n: int, arms: int = 5, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A 5-arm spiral in 2-D (class = arm), embedded in ``dim`` dims by a fixed random map, plus noise."""
    gen = np.random.default_rng([seed, 3, n])
    label = gen.integers(0, arms, n)
    r = gen.uniform(0.05, 1.0, n)
    angle = 2 * math.pi * label / arms + 3.0 * r + 0.25 * gen.standard_normal(n)
    plane = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    embed = np.random.default_rng(12345).standard_normal((2, dim))     # the same map for every split
    x = plane @ embed + 0.1 * gen.standard_normal((n, dim))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(label)


def _mlp(seed: int) -> Problem:
    x, y = spirals(seed, 2000)
    x_test, y_test = spirals(seed + 10_000, 1000)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 5))

    def loss_at(step):
        idx = torch.from_numpy(np.random.default_rng([seed, 4, step]).integers(0, len(x), 64))
        return F.cross_entropy(model(x[idx]), y[idx])

    def groups(lr, **extra):
        return [{"params": list(model[i].parameters()), "lr": lr, **extra} for i in (0, 2, 4)]

    def evaluate():
        with torch.no_grad():
            return float(F.cross_entropy(model(x_test), y_test))

    return Problem(model, {"sgd": groups(0.03, momentum=0.9), "adamw": groups(3e-3, weight_decay=1e-4)},
                   loss_at, evaluate, steps=400)


def _nanochat(seed: int) -> Problem:
    from fusedgate.nanochat.data import load_data, train_batch, val_batches
    from fusedgate.nanochat.model import GPT, GPTConfig
    from fusedgate.nanochat.presets import get_preset
    from fusedgate.nanochat.train import evaluate_bpb

    preset = get_preset("tiny")
    seq_len, batch_size = 64, 16
    data = load_data(None, "byte", preset.max_corpus_bytes)
    config = GPTConfig.from_depth(1, data.vocab_size, seq_len, preset.aspect_ratio, preset.head_dim)
    torch.manual_seed(seed)
    model = GPT(config)
    nano = model.param_groups(preset.embedding_lr, preset.unembedding_lr, preset.matrix_lr, 0.0,
                              matrix_kind="adamw", adam_matrix_lr=preset.adam_matrix_lr)
    keep = ("params", "lr", "betas", "eps", "weight_decay")
    adamw = [{k: g[k] for k in keep} for g in nano]
    sgd = [{"params": g["params"], "lr": 0.3, "momentum": 0.9} for g in nano]
    val = val_batches(data, batch_size, seq_len, 8192)
    token_bytes = torch.from_numpy(data.token_bytes)

    def loss_at(step):
        x, y = train_batch(data, seed, step, batch_size, seq_len)
        return model(x, y)

    def evaluate():
        return evaluate_bpb(model, val, token_bytes, torch.device("cpu"), contextlib.nullcontext)

    return Problem(model, {"sgd": sgd, "adamw": adamw}, loss_at, evaluate, steps=300)


BUILDERS = {"regression": _regression, "mlp": _mlp, "nanochat": _nanochat}


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups)
    if name == "adamw":
        return torch.optim.AdamW(groups)
    raise ValueError(f"unknown optimizer {name!r}")


def run_once(task: str, optimizer: str, seed: int, brain: bool, steps: int | None = None,
             brain_kwargs: dict | None = None) -> dict:
    """Train one (task, optimizer, seed) arm; returns final loss, train-loss curve, wall time, report."""
    from fusedgate.brain import OptBrain

    problem = BUILDERS[task](seed)
    base = make_optimizer(optimizer, problem.groups[optimizer])
    opt = OptBrain(base, seed=seed, **(brain_kwargs or {})) if brain else base
    steps = steps or problem.steps
    curve, diverged = [], False
    t0 = time.perf_counter()
    for step in range(steps):
        loss = problem.loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if brain:
            opt.step(loss=loss.detach())
        else:
            opt.step()
        if step % 10 == 0 or step == steps - 1:
            curve.append(loss.item())             # a sync every 10 steps, the same in both arms
            if not math.isfinite(curve[-1]):
                diverged = True
                break
    wall = time.perf_counter() - t0
    final = math.nan if diverged else problem.evaluate()
    return {"task": task, "optimizer": optimizer, "seed": seed, "brain": brain, "final": final,
            "curve": curve, "wall_s": wall, "steps": steps, "diverged": diverged,
            "report": opt.report() if brain else None}

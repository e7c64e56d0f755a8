"""Small real training problems for ``fusedgate brain-eval``, and one training run of an *arm* on them.

Each task builds, from a seed, the model (init from ``torch.manual_seed(seed)``), its param groups
per optimizer, a per-step loss (data order a pure function of (seed, step)) and a final evaluation,
so every arm with the same seed sees the same init and the same batches (paired comparison). The
*tuned* learning rates are constant and were chosen for the base optimizer by a coarse sweep (×3
steps) before any brain run; the brain has to improve on a reasonably tuned base.

* ``regression`` — ill-conditioned least squares: 32 features scaled by logspace(0, −2) (Hessian
  condition number ≈ 10⁴), y = X·w* + 0.01·noise, a linear layer (weight, bias groups), batch 64,
  final loss = full-data MSE.
* ``mlp`` — a generated 5-arm spiral classification problem in 2-D, embedded in 16-D by a random
  linear map plus noise features; MLP 16→64→64→5 (one group per layer), batch 64, final loss =
  held-out cross-entropy on 1000 points.
* ``nanochat`` — the project's NanoChat GPT (``fusedgate.nanochat``) on its default corpus (the
  Python standard library, byte tokens) with the ``tiny`` preset's widths and learning rates but
  depth 1, context 64, batch 16 (smaller than ``tiny`` so that the evaluation grid fits in minutes on
  one CPU thread); final loss = validation bits per byte on 8192 tokens.

The held-out family (``logreg``, ``cnn``, ``charrnn``) is in ``fusedgate.brain.heldout``.

Optimizers: ``sgd`` (momentum 0.9), ``adamw`` and ``fusedgate`` (``FusedGate`` with
``GateSpec.gated()``; on nanochat with nanochat's own groups: Muon-units matrices, AdamW embeddings).

An arm (``Arm``) is the base optimizer, optionally wrapped in an ``OptBrain``, under one condition:
every group's lr times ``lr_mult``; ``schedule``: nanochat's warmup + linear warmdown
(``fusedgate.nanochat.schedule.Schedule``: warmup 5 % of the steps, warmdown over the last 65 % to 5 %
of the peak) with the peak lr tuned for the schedule (``SCHEDULE_PEAK`` × the tuned constant lr);
``spikes``: planted gradient spikes — on each step from step 10 on, with
probability 3 % (seeded by (seed, step)), every gradient is multiplied by 30 after ``backward``;
``clip``: a fixed global grad-norm clip (``torch.nn.utils.clip_grad_norm_``) at 2× the median grad
norm of the first 10 (spike-free) steps; ``restore_lr``: no brain, the mis-set lr (``lr_mult``) for as
long as an OptBrain would stay neutral — its warm-up, ``warmup_windows``·``window`` steps of the run's
brain config — and the tuned lr from then on (every lr × 1/``lr_mult``): the plain correction a brain
could make at its first window, to tell a mis-set lr that a rescue can still repair from one whose cost is
paid before any brain may act.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fusedgate.brain.heldout import HELDOUT_BUILDERS, HELDOUT_TASKS, PEAK

TUNING_TASKS = ("regression", "mlp", "nanochat")
TASKS = TUNING_TASKS + HELDOUT_TASKS
# the two families: the tasks OptBrain's defaults were tuned on, and the held-out ones (``heldout.py``)
FAMILIES = {"tuning": TUNING_TASKS, "heldout": HELDOUT_TASKS}
OPTIMIZERS = ("sgd", "adamw", "fusedgate")
# FusedGate (GateSpec.gated(), Adam units) on the small tasks: the best of a ×3 sweep for the base
FUSEDGATE_LR = {"regression": 0.09, "mlp": 9e-3}
# the schedule's peak lr as a multiple of the tuned constant lr: the best of ×1, ×2, ×3 on seeds 0 and 1
# (a decaying schedule tolerates a larger peak; on nanochat SGD none beat ×1)
SCHEDULE_PEAK = {("regression", "sgd"): 2.0, ("regression", "adamw"): 3.0, ("regression", "fusedgate"): 2.0,
                 ("mlp", "sgd"): 3.0, ("mlp", "adamw"): 3.0, ("mlp", "fusedgate"): 2.0,
                 ("nanochat", "sgd"): 1.0, ("nanochat", "adamw"): 2.0, ("nanochat", "fusedgate"): 2.0, **PEAK}
SPIKE_FROM, SPIKE_PROB, SPIKE_FACTOR = 10, 0.03, 30.0
CLIP_CALIBRATION_STEPS, CLIP_MULTIPLE = 10, 2.0


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

    return Problem(model, {"sgd": [dict(g, momentum=0.9) for g in groups(0.3)], "adamw": groups(0.03),
                           "fusedgate": groups(FUSEDGATE_LR["regression"])},
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

    return Problem(model, {"sgd": groups(0.03, momentum=0.9), "adamw": groups(3e-3, weight_decay=1e-4),
                           "fusedgate": groups(FUSEDGATE_LR["mlp"])},
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
    fused = model.param_groups(preset.embedding_lr, preset.unembedding_lr, preset.matrix_lr, 0.0,
                               matrix_kind="muon")
    fused = [{k: v for k, v in g.items() if k != "param_names"} for g in fused]
    val = val_batches(data, batch_size, seq_len, 8192)
    token_bytes = torch.from_numpy(data.token_bytes)

    def loss_at(step):
        x, y = train_batch(data, seed, step, batch_size, seq_len)
        return model(x, y)

    def evaluate():
        return evaluate_bpb(model, val, token_bytes, torch.device("cpu"), contextlib.nullcontext)

    return Problem(model, {"sgd": sgd, "adamw": adamw, "fusedgate": fused}, loss_at, evaluate, steps=300)


BUILDERS = {"regression": _regression, "mlp": _mlp, "nanochat": _nanochat, **HELDOUT_BUILDERS}


def family_of(task: str) -> str:
    """``"tuning"`` or ``"heldout"``."""
    return next(name for name, tasks in FAMILIES.items() if task in tasks)


def make_optimizer(name: str, groups: list[dict], total_steps: int) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups)
    if name == "adamw":
        return torch.optim.AdamW(groups)
    if name == "fusedgate":
        from fusedgate.optimizer import FusedGate
        from fusedgate.spec import GateSpec

        return FusedGate(groups, spec=GateSpec.gated(), total_steps=total_steps)
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass(frozen=True)
class Arm:
    """One training condition: the base optimizer (``brain``: wrapped in an OptBrain) with every lr
    times ``lr_mult``, optionally under the warmup + warmdown ``schedule``, with planted gradient
    ``spikes``, a fixed ``clip``, and the lr restored to the tuned one after the brain's warm-up (``restore_lr``)."""

    brain: bool = False
    lr_mult: float = 1.0
    schedule: bool = False
    spikes: bool = False
    clip: bool = False
    restore_lr: bool = False


def spike_steps(seed: int, steps: int) -> set[int]:
    """The steps whose gradients are multiplied by SPIKE_FACTOR (a pure function of seed and step)."""
    return {t for t in range(SPIKE_FROM, steps) if np.random.default_rng([seed, 9, t]).random() < SPIKE_PROB}


def warmup_steps(brain_kwargs: dict | None) -> int:
    """The steps an OptBrain with ``brain_kwargs`` keeps exactly neutral before it may act: its
    ``warmup_windows`` windows of ``window`` steps."""
    from fusedgate.brain.config import BrainConfig

    config = BrainConfig.from_kwargs(None, **(brain_kwargs or {}))
    return config.warmup_windows * config.window


def restoring(lr_mult: float, at: int, then: Callable[[int], float] | None) -> Callable[[int], float]:
    """The lr factor of a ``restore_lr`` arm: 1 before step ``at``, 1/``lr_mult`` from it on; times ``then``."""
    def factor(step: int) -> float:
        return (1.0 if step < at else 1.0 / lr_mult) * (then(step) if then is not None else 1.0)

    return factor


def _global_grad_norm(params) -> float:
    return math.sqrt(sum(float(p.grad.detach().double().pow(2).sum()) for p in params if p.grad is not None))


def run_arm(task: str, optimizer: str, seed: int, arm: Arm, steps: int | None = None,
            brain_kwargs: dict | None = None, lr_factor: Callable[[int], float] | None = None) -> dict:
    """Train one (task, optimizer, seed, arm); returns the final loss, a train-loss curve, wall time and
    the brain's report. ``lr_factor(step)``: a further multiplier of every lr at each step (on top of the
    arm's ``lr_mult`` and schedule)."""
    from fusedgate.brain import OptBrain
    from fusedgate.nanochat.schedule import Schedule

    if arm.restore_lr:
        if arm.brain:
            raise ValueError("an arm restores its lr itself or has a brain, not both")
        lr_factor = restoring(arm.lr_mult, warmup_steps(brain_kwargs), lr_factor)
    problem = BUILDERS[task](seed)
    steps = steps or problem.steps
    groups = [dict(g) for g in problem.groups[optimizer]]
    mult = arm.lr_mult * (SCHEDULE_PEAK[(task, optimizer)] if arm.schedule else 1.0)
    for g in groups:
        g["lr"] = g["lr"] * mult
    base = make_optimizer(optimizer, groups, steps)
    base_lrs = [g["lr"] for g in base.param_groups]
    opt = OptBrain(base, **{"seed": seed, "total_steps": steps, **(brain_kwargs or {})}) if arm.brain else base
    schedule = Schedule(steps, warmup_steps=max(1, round(0.05 * steps))) if arm.schedule else None
    spikes = spike_steps(seed, steps) if arm.spikes else set()
    params = [p for g in base.param_groups for p in g["params"]]
    calibration, clip_at = [], math.inf
    fused = optimizer == "fusedgate"
    curve, diverged = [], False
    t0 = time.perf_counter()
    for step in range(steps):
        if schedule is not None or lr_factor is not None:
            factor = (schedule.lr_multiplier(step) if schedule is not None else 1.0) * \
                (lr_factor(step) if lr_factor is not None else 1.0)
            for g, lr in zip(base.param_groups, base_lrs):
                g["lr"] = lr * factor
        loss = problem.loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step in spikes:
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], SPIKE_FACTOR)
        if arm.clip:
            if step < CLIP_CALIBRATION_STEPS:
                calibration.append(_global_grad_norm(params))
            else:
                if step == CLIP_CALIBRATION_STEPS:
                    clip_at = CLIP_MULTIPLE * statistics.median(calibration)
                torch.nn.utils.clip_grad_norm_(params, clip_at)
        if arm.brain or fused:
            opt.step(loss=loss.detach())
        else:
            opt.step()
        if step % 10 == 0 or step == steps - 1:
            curve.append(loss.item())             # a sync every 10 steps, the same in every arm
            if not math.isfinite(curve[-1]):
                diverged = True
                break
    wall = time.perf_counter() - t0
    final = math.nan if diverged else problem.evaluate()
    if not math.isfinite(final):
        diverged, final = True, math.nan
    return {"task": task, "optimizer": optimizer, "seed": seed, "arm": arm, "final": final,
            "curve": curve, "wall_s": wall, "steps": steps, "diverged": diverged,
            "report": opt.report() if arm.brain else None}

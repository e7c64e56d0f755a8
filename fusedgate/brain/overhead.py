"""What OptBrain costs per step, and what it could cost at best: the ``brain-eval`` overhead section.

    python -m fusedgate.brain.overhead --out DIR     # this section alone: DIR/brain_overhead.{md,json}

Model: the NanoChat ``tiny`` preset (depth 2, context 128, batch 16) with AdamW, one thread. Arms:
``base`` (AdamW alone), ``neutral`` (a brain whose trust gate has ended the policy, α = 0 — final, and
the state the gate leaves almost every evaluation run in: a step is the base step and a counter) and
``learning`` (exploring as in a run, its trust held at α = 1 so the safety gate cannot turn it neutral
during the measurement: the costliest case, sensing once per window and its knobs on); and, on the
optimizer step alone, ``sensing`` (the learning arm with nothing to learn — σ = 0 and no hypergradient, so its
knobs stay at neutral: the sensing, the window's read and the learner's bookkeeping alone, what learning
costs before any knob acts) and ``warmdown`` (an ended brain inside the warmdown phase, ``fusedgate.brain.warmdown``,
its test kept undecided: the losses read again, the test windows' lr at ½ and 1.5 — each step's loss read in
the windows at 1.5, the guard, which a real run does in at most ``warmdown_pairs`` windows — no features).

Two measurements. Full training steps (forward, backward, step) in alternating blocks, medians — the
honest end-to-end number, but its noise is far above 0.1 %. And the optimizer step alone: for each brain
arm, its own base optimizer's ``step()`` and the brain's ``step()`` in turn on the same model (the same
memory, so no arm gains from where its tensors happen to lie; which goes first alternates), the same
gradients copied in before each. The step that runs second finds the model's tensors in cache, so the
paired differences are taken per order and the overhead is the mean over the two orders of their
trimmed means (2 % cut from each tail: a preempted step). A mean, not a median: the features are
measured on one step per window, and a median would hide that step's cost.

The floor. The generic mechanism's knobs touch every gradient or parameter of a group: the clip reads
the gradients for their norm (one pass) and, when a group clips, scales them (a second); dampen copies
the parameters before the step and then needs Δ, u and before + u (4 passes, each at least a read).
With P the time of one read of every gradient (the brain's own, ``TorchFeatures.group_norms``: on the
CPU a BLAS dot per tensor, about half a ``torch._foreach_norm``) and f_clip, f_dampen the shares of
parameter-steps on which the learning arm had each knob on, no implementation of these knobs costs less
than (f_clip + 4·f_dampen)·P; and sensing reads every gradient and every parameter once per window of K
steps (their norms), at least 2P/K per step. The report states both beside the measurement.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import time


def _arm_builder(config, preset):
    """``build(kind)`` -> (model, optimizer) of one arm, each on the same seeded model: ``base``, ``neutral``,
    ``learning``, ``sensing`` or ``warmdown`` (see the module docstring)."""
    import torch

    from fusedgate.brain import OptBrain
    from fusedgate.nanochat.model import GPT

    def build(kind):
        torch.manual_seed(0)
        model = GPT(config)
        groups = model.param_groups(preset.embedding_lr, preset.unembedding_lr, preset.matrix_lr, 0.0,
                                    matrix_kind="adamw", adam_matrix_lr=preset.adam_matrix_lr)
        base = torch.optim.AdamW([{k: g[k] for k in ("params", "lr", "betas", "eps", "weight_decay")}
                                  for g in groups])
        if kind == "base":
            return model, base
        if kind == "neutral":   # α = 0 and the ladder done at ℓ = 1: what a run is once the gate has ended the policy
            return model, OptBrain(base, alpha_start=0.0, alpha_min=0.0, ladder=0)
        if kind == "sensing":   # learning at α = 1 with nothing to learn (σ = 0, κ = 0): its knobs stay neutral
            return model, OptBrain(base, warmup_windows=1, alpha_start=1.0, z_shrink=10.0, sigma=(0.0, 0.0, 0.0),
                                   hypergrad=0.0)
        if kind == "warmdown":  # α = 0 inside an undecided warmdown test (window 1 on): the losses read again
            return model, OptBrain(base, alpha_start=0.0, alpha_min=0.0, total_steps=100, warmdown=0.9,
                                   warmdown_pairs=100, warmdown_z=10.0, ladder=0)
        return model, OptBrain(base, warmup_windows=1, alpha_start=1.0, z_shrink=10.0)   # (one warm-up: no ladder)

    return build


def trimmed_mean(values: list[float], cut: float = 0.02) -> float:
    """The mean without the lowest and the highest ``cut`` share of ``values`` (a preempted step)."""
    ordered = sorted(values)
    k = int(cut * len(ordered))
    return statistics.fmean(ordered[k:len(ordered) - k])


def _step_only(arms, grads, repeats: int) -> tuple[list[float], dict, float, dict]:
    """For each brain arm, its own base optimizer's step and the brain's step on the same memory, the
    same gradients copied in before each, alternating: (the base-step times, per brain arm the paired
    differences brain − base, P = the median time of the brain's own read of every gradient, the
    learning arm's knob duty cycle: per knob, the mean over steps of the share of the parameters it
    acted on)."""
    import numpy as np
    import torch

    base_times = []
    extra = {k: [] for k in arms if k != "base"}
    passes, on = [], {"clip": 0.0, "dampen": 0.0}
    loss = torch.tensor(3.0)
    for r in range(repeats):
        for kind in extra:
            model, brain = arms[kind]
            brain_step = functools.partial(brain.step, loss=loss)
            order = (brain.base.step, brain_step) if r % 2 == 0 else (brain_step, brain.base.step)
            spent = []
            for step in order:   # base first on even repeats, the brain first on odd ones: no order bias
                for p, g in zip(model.parameters(), grads):
                    p.grad.copy_(g)
                if kind == "learning" and step is brain_step and brain._plan is not None:
                    _, clip, damped = brain._plan
                    share = brain.features.numel / brain.features.numel.sum()
                    on["clip"] += 0.0 if clip is None else float(share[np.isfinite(clip)].sum())
                    on["dampen"] += float(sum(share[g] for g, _ in damped))
                t0 = time.perf_counter()
                step()
                spent.append(time.perf_counter() - t0)
            base_s, brain_s = spent if r % 2 == 0 else spent[::-1]
            base_times.append(base_s)
            extra[kind].append(brain_s - base_s)
        features = arms["learning"][1].features
        grads = [p.grad for p in arms["learning"][0].parameters()]
        t0 = time.perf_counter()
        features.group_norms(grads, tuple(range(features.n_groups)))   # the brain's own read of them
        passes.append(time.perf_counter() - t0)
    return base_times, extra, statistics.median(passes), {k: v / repeats for k, v in on.items()}


def measure_overhead(blocks: int = 7, steps: int = 20, repeats: int = 200) -> dict:
    """The overhead section's numbers (see the module docstring)."""
    from fusedgate.nanochat.data import load_data, train_batch
    from fusedgate.nanochat.model import GPTConfig
    from fusedgate.nanochat.presets import get_preset

    preset = get_preset("tiny")
    data = load_data(None, "byte", preset.max_corpus_bytes)
    config = GPTConfig.from_depth(preset.depth, data.vocab_size, preset.seq_len, preset.aspect_ratio,
                                  preset.head_dim)
    build = _arm_builder(config, preset)
    arms = {kind: build(kind) for kind in ("base", "neutral", "learning")}

    def one_step(kind, t):
        model, opt = arms[kind]
        x, y = train_batch(data, 0, t, preset.batch_size, preset.seq_len)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss.detach()) if kind != "base" else opt.step()

    full = {k: [] for k in arms}
    for block in range(blocks):
        for kind in arms:
            t0 = time.perf_counter()
            for s in range(steps):
                one_step(kind, block * steps + s)
            full[kind].append((time.perf_counter() - t0) / steps)
    # step only: a fourth arm, built now since real losses would let its warmdown test decide (the
    # optimizer-step pairs pass a constant loss, which keeps it undecided)
    arms["warmdown"] = build("warmdown")
    arms["sensing"] = build("sensing")
    for kind in arms:   # gradients everywhere, then the same ones copied into every arm
        one_step(kind, 0)
    grads = [p.grad.clone() for p in arms["base"][0].parameters()]
    base_steps, paired, pass_s, duty = _step_only(arms, grads, repeats)
    base_full = statistics.median(full["base"])
    floor = (duty["clip"] + 4 * duty["dampen"]) * pass_s
    sense_floor = 2 * pass_s / arms["learning"][1].window
    out = {"model": "nanochat tiny (depth 2, context 128, batch 16), AdamW",
           "params": sum(p.numel() for p in arms["base"][0].parameters()),
           "groups": len(arms["base"][1].param_groups), "base_full_ms": 1000 * base_full,
           "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
           "base_step_us": 1e6 * statistics.median(base_steps), "pass_us": 1e6 * pass_s,
           "duty": duty, "floor_us": 1e6 * floor, "floor": floor / base_full,
           "sense_floor_us": 1e6 * sense_floor, "repeats": repeats,
           "method": "paired"}
    for kind in paired:   # the order effect cancels in the mean over the two orders
        extra = (trimmed_mean(paired[kind][0::2]) + trimmed_mean(paired[kind][1::2])) / 2
        out[kind] = {"step_extra_us": 1e6 * extra, "overhead": extra / base_full}
        if kind in full:
            out[kind].update(full_ms=1000 * statistics.median(full[kind]),
                             full_overhead=statistics.median(full[kind]) / base_full - 1.0)
    out["learning"]["report"] = arms["learning"][1].report()
    out["warmdown"]["report"] = arms["warmdown"][1].report()
    out["sensing"]["report"] = arms["sensing"][1].report()
    return out


def state_bytes_8_groups() -> tuple[int, int]:
    """Bytes of the brain's saved state for 8 groups: (torch wrapper, numpy mode)."""
    import torch

    from fusedgate.brain import OptBrain

    layers = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(8)])
    brain = OptBrain(torch.optim.AdamW([{"params": list(m.parameters())} for m in layers]))
    numpy_brain = OptBrain(None, n_groups=8)
    return brain.state_nbytes(), numpy_brain.state_nbytes()


def main(argv: list[str] | None = None) -> int:
    """Measure the overhead alone (one thread) and write ``brain_overhead.md`` and ``.json`` into ``--out``."""
    import torch

    from fusedgate.brain.report import overhead_paragraphs
    from fusedgate.files import write_atomic

    parser = argparse.ArgumentParser(prog="python -m fusedgate.brain.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for brain_overhead.md and brain_overhead.json")
    parser.add_argument("--blocks", type=int, default=7, help="alternating full-step blocks per arm (default 7)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per block (default 20)")
    parser.add_argument("--repeats", type=int, default=200, help="interleaved optimizer steps per arm (default 200)")
    args = parser.parse_args(argv)
    if min(args.blocks, args.steps, args.repeats) < 1:
        parser.error("--blocks, --steps and --repeats must be at least 1")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    overhead = measure_overhead(args.blocks, args.steps, args.repeats)
    text = "\n".join(["# OptBrain overhead", "", "Command: `python -m fusedgate.brain.overhead`", "",
                      *overhead_paragraphs(overhead)])
    write_atomic(os.path.join(args.out, "brain_overhead.md"), text)
    write_atomic(os.path.join(args.out, "brain_overhead.json"), json.dumps(overhead, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

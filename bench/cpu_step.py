"""CPU optimizer-step cost: FusedGate's reference path against the trainer's baseline ``MuonAdamW``.

On the CPU the reference path is what users run, so its cost is measured the way a user pays it:
the optimizer step alone on a nanochat GPT's real parameter groups (depth 2, width 128 by default),
one thread, with fixed gradients (the same tensors for every contestant). Contestants run in one
process in alternating blocks (A, B, C, A, B, C, ...); each block times ``--block`` steps and the
reported cost is the median over blocks of the per-step time, and the ratio is to the baseline's.

    python -m fusedgate.bench.cpu_step --depth 2 --blocks 30 --block 10

Writes nothing; prints a table and, with ``--json``, the numbers. Speed goals live here, never in a
timed test.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time

import torch

from fusedgate.argtypes import int_in, number_in
from fusedgate.cli import OneLineErrorParser
from fusedgate.spec import SpecError


def _model(depth: int, seed: int = 0):
    from fusedgate.nanochat.model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig.from_depth(depth, vocab_size=256, sequence_len=128))


def _groups(model, weight_decay: float) -> list[dict]:
    return model.param_groups(0.3, 0.008, 0.02, weight_decay)


def _contestants(depth: int, specs: list[str], weight_decay: float):
    from fusedgate import FusedGate, GateSpec
    from fusedgate.nanochat.muon import MuonAdamW

    base = _model(depth)
    gen = torch.Generator().manual_seed(1)
    grads = {name: torch.randn(p.shape, generator=gen) * 1e-2 for name, p in base.named_parameters()}
    out = {}

    def build(label, make):
        model = copy.deepcopy(base)
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        out[label] = (model, make(_groups(model, weight_decay)))

    build("baseline", MuonAdamW)
    for name in specs:
        spec = GateSpec.from_name_or_file(name)
        build(f"fusedgate:{name}", lambda groups, spec=spec: FusedGate(groups, spec=spec, total_steps=10_000,
                                                                       backend="reference"))
    return out


def alternate(steps: dict, blocks: int, block: int, warmup: int) -> dict[str, float]:
    """label → median over ``blocks`` alternating blocks of the per-step seconds of ``steps[label]()`` (each
    called ``warmup`` times first, untimed)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(blocks):
        for label, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(block):
                step()
            samples[label].append((time.perf_counter() - t0) / block)
    return {label: statistics.median(s) for label, s in samples.items()}


def measure(depth: int = 2, specs: tuple[str, ...] = ("nanochat", "gated"), blocks: int = 30, block: int = 10,
            warmup: int = 5, weight_decay: float = 0.1) -> dict:
    """Median per-step seconds per contestant and the ratio to the baseline (see the module docstring)."""
    contestants = _contestants(depth, list(specs), weight_decay)
    loss = torch.tensor(3.0)
    median = alternate({label: (lambda opt=opt: opt.step(loss=loss)) for label, (_, opt) in contestants.items()},
                       blocks, block, warmup)
    base = median["baseline"]
    return {"depth": depth, "threads": torch.get_num_threads(), "blocks": blocks, "block": block,
            "load_average": os.getloadavg()[0],
            "median_ms": {k: v * 1e3 for k, v in median.items()},
            "ratio": {k: v / base for k, v in median.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m fusedgate.bench.cpu_step", description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int_in(1, 64), default=2, help="GPT depth, 1 to 64 (default 2)")
    parser.add_argument("--specs", default="nanochat,gated",
                        help="comma-separated preset names or spec files (default nanochat,gated)")
    parser.add_argument("--blocks", type=int_in(1, 10_000), default=30, help="timed blocks, 1 to 10,000 (default 30)")
    parser.add_argument("--block", type=int_in(1, 10_000), default=10,
                        help="steps per block, 1 to 10,000 (default 10)")
    parser.add_argument("--threads", type=int_in(1, 1024), default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--weight-decay", type=number_in(0, 10), default=0.1,
                        help="weight decay of the groups, 0 to 10 (default 0.1)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        result = measure(args.depth, tuple(s for s in args.specs.split(",") if s), args.blocks, args.block,
                         weight_decay=args.weight_decay)
    except SpecError as exc:
        print(f"{parser.prog}: error: --specs: {exc}", file=sys.stderr)
        return 2
    print_result(result, args.json, width=24)
    return 0


def print_result(result: dict, as_json: bool, width: int) -> None:
    """A step-cost measurement as JSON, or one line of set-up and one line per contestant."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"depth {result['depth']}, {result['threads']} thread(s), {result['blocks']}×{result['block']} steps, "
          f"load average {result['load_average']:.2f}")
    for label, ms in result["median_ms"].items():
        print(f"  {label:<{width}} {ms:8.2f} ms  {result['ratio'][label]:.3f}×")


if __name__ == "__main__":
    raise SystemExit(main())

"""CPU optimizer-step cost of FusedGate's compiled backend against nanochat's own compiled step.

nanochat compiles its optimizer (``torch.compile(fullgraph=True, dynamic=False)`` functions over stacked
tensors, hyperparameters as 0-D tensors), so that is the step users compare against. The opponent is
upstream ``nanochat.optim.MuonAdamW`` when ``nanochat`` is importable, else the project's baseline
``fusedgate.nanochat.muon.MuonAdamW`` with its two updates compiled the same way (``CompiledMuonAdamW``
below). Contestants: that opponent, FusedGate ``backend="compiled"`` and ``backend="reference"`` for each
spec. The optimizer step alone, on a nanochat GPT's real parameter groups, one thread, fixed gradients,
alternating blocks, median per-step time over blocks, ratio to the opponent (``cpu_step.alternate``).

    cd /tmp && PYTHONPATH=<upstream> python -m fusedgate.bench.compiled_step --depth 2 --blocks 30 --block 10

(``<upstream>``: the folder holding karpathy/nanochat's ``nanochat/``. Run it outside the checkout's root:
there ``python -m`` puts the root first on ``sys.path``, and the checkout's own ``nanochat/`` folder —
installed as ``fusedgate.nanochat`` — shadows upstream ``nanochat``, so the opponent silently becomes the
baseline; the printed label says which one ran.)

Writes nothing; prints a table (``--json``: the numbers). Timing belongs on an idle machine; the tests
only smoke-run it at tiny sizes.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

from fusedgate.bench.cpu_step import _groups, _model, alternate, print_result
from fusedgate.nanochat.muon import MuonAdamW, muon_direction


def _adamw_update(p, grad, exp_avg, exp_avg_sq, step_t, lr_t, beta1_t, beta2_t, eps_t, wd_t) -> None:
    """The baseline's AdamW update with 0-D tensor hyperparameters (nanochat's ``adamw_step_fused``)."""
    p.mul_(1 - lr_t * wd_t)
    exp_avg.lerp_(grad, 1 - beta1_t)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2_t)
    denom = (exp_avg_sq / (1 - beta2_t ** step_t)).sqrt() + eps_t
    p.add_(exp_avg / denom * (-lr_t / (1 - beta1_t ** step_t)))


def _muon_update(grads, stacked, momentum_buffer, second_moment, momentum_t, beta2_t, lr_t, wd_t, ns_steps: int):
    """The baseline's Muon update of a stack (nanochat's ``muon_step_fused``): returns the new stack."""
    direction = muon_direction(grads, momentum_buffer, second_moment, momentum_t, beta2_t, ns_steps)
    cautious = (direction * stacked >= 0).to(stacked.dtype)
    return stacked - (lr_t * direction + lr_t * wd_t * stacked * cautious)


class CompiledMuonAdamW(MuonAdamW):
    """The project's baseline with its updates compiled as nanochat compiles its own (hyperparameters as
    0-D float32 tensors: a schedule recompiles nothing)."""

    def __init__(self, param_groups: list[dict]):
        super().__init__(param_groups)
        self._adamw_fn = torch.compile(_adamw_update, fullgraph=True, dynamic=False)
        self._muon_fn = torch.compile(_muon_update, fullgraph=True, dynamic=False)

    @staticmethod
    def _t(x: float) -> torch.Tensor:
        return torch.tensor(float(x), dtype=torch.float32)

    def _adamw_update(self, p: torch.Tensor, state: dict, group: dict) -> None:
        beta1, beta2 = group["betas"]
        self._adamw_fn(p, p.grad, state["exp_avg"], state["exp_avg_sq"], self._t(state["step"]),
                       self._t(group["lr"]), self._t(beta1), self._t(beta2), self._t(group["eps"]),
                       self._t(group["weight_decay"]))

    def _muon(self, group: dict) -> None:
        params = group["params"]
        rows, cols = params[0].shape
        state = self.state[params[0]]
        if not state:
            state["momentum_buffer"] = torch.zeros(len(params), rows, cols)
            shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            state["second_momentum_buffer"] = torch.zeros(shape)
        lr = group["lr"] * max(1.0, rows / cols) ** 0.5
        new = self._muon_fn(torch.stack([p.grad for p in params]).float(), torch.stack(params),
                            state["momentum_buffer"], state["second_momentum_buffer"], self._t(group["momentum"]),
                            self._t(group["beta2"]), self._t(lr), self._t(group["weight_decay"]), group["ns_steps"])
        torch._foreach_copy_(params, list(new.unbind(0)))


def opponent():
    """(label, optimizer class): upstream nanochat's compiled MuonAdamW if importable, else the baseline
    compiled the same way."""
    try:
        from nanochat.optim import MuonAdamW as Upstream  # karpathy/nanochat, when installed
    except ImportError:
        return "baseline MuonAdamW, compiled as nanochat compiles", CompiledMuonAdamW
    return "nanochat.optim.MuonAdamW (its compiled step)", Upstream


def contestants(depth: int, specs: list[str], weight_decay: float,
                backends: tuple[str, ...] = ("compiled", "reference")) -> dict:
    """label → (model, step function) on identical models and gradients."""
    from fusedgate import FusedGate, GateSpec

    base = _model(depth)
    gen = torch.Generator().manual_seed(1)
    grads = {name: torch.randn(p.shape, generator=gen) * 1e-2 for name, p in base.named_parameters()}
    loss = torch.tensor(3.0)
    out = {}

    def build(label, make, takes_loss=True):
        model = copy.deepcopy(base)
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        opt = make(_groups(model, weight_decay))
        out[label] = (model, (lambda: opt.step(loss=loss)) if takes_loss else opt.step)

    label, cls = opponent()
    build(label, cls, takes_loss=False)   # (upstream's step takes no loss)
    for name in specs:
        spec = GateSpec.from_name_or_file(name)
        for backend in backends:
            build(f"fusedgate:{name}:{backend}",
                  lambda groups, spec=spec, backend=backend: FusedGate(groups, spec=spec, total_steps=10_000,
                                                                       backend=backend))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=2, help="GPT depth (default 2)")
    parser.add_argument("--specs", default="nanochat,gated",
                        help="comma-separated preset names or spec files (default nanochat,gated)")
    parser.add_argument("--backends", default="compiled,reference",
                        help="FusedGate backends per spec (default compiled,reference; 'compiled' alone: head-to-head)")
    parser.add_argument("--blocks", type=int, default=30, help="alternating blocks (default 30)")
    parser.add_argument("--block", type=int, default=10, help="steps per block (default 10)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per contestant, compiling (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="matrix weight decay (default 0.1)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    backends = tuple(b for b in args.backends.split(",") if b)
    if not backends or any(b not in ("compiled", "reference") for b in backends):
        parser.error(f"--backends {args.backends!r}: expected a comma list of compiled, reference")
    if min(args.depth, args.blocks, args.block, args.threads, args.warmup) < 1:
        parser.error("--depth, --blocks, --block, --warmup and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    steps = {label: step for label, (_, step) in
             contestants(args.depth, [s for s in args.specs.split(",") if s], args.weight_decay, backends).items()}
    median = alternate(steps, args.blocks, args.block, args.warmup)
    base = next(iter(median.values()))
    result = {"depth": args.depth, "threads": torch.get_num_threads(), "blocks": args.blocks, "block": args.block,
              "load_average": os.getloadavg()[0], "median_ms": {k: v * 1e3 for k, v in median.items()},
              "ratio": {k: v / base for k, v in median.items()}}
    print_result(result, args.json, width=52)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The compiled backend: the reference backend with its per-tensor updates compiled as nanochat compiles its own.

``gated_step(stacks, gate, *, iterate, cache)`` — the signature of every backend — runs the reference
backend's orchestration (``reference.step_stacks``: the gate of all matrices at once, the sensor EMAs, the
step counts) with its two updates replaced by ``torch.compile(fullgraph=True, dynamic=False)`` functions:

    the gated update of one same-shape run   ``reference.stack_update`` + ``write_back``, over the stacked
                                             P, g and packed state (k, rows, cols)
    the AdamW update of one parameter        ``reference.adamw_masked``

Hyperparameters (lr, momentum, eps, weight decay, betas, NorMuon's decay) and the actuators enter as 0-D /
(k,) float64 tensors, so a schedule causes no recompile; what is static — shapes, dtypes, the engine's
switches, ns_steps, nesterov, units, which directions the poles use — is specialised (one graph each). Every
step is computed masked (no host read of the finiteness flags), so rounding differs from the eager CPU
path by an ulp here and there: the eager reference is the truth it is tested against (teacher-forced).

Compiling unavailable (no C++ compiler, an old torch, a backend error): one warning, then the eager
reference for the rest of that optimizer's life (the verdict is kept in the caller's ``cache``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from fusedgate import reference as R
from fusedgate.stack import AdamWHyper, Gate, MatrixHyper, Stack

_VERDICT = "compiled: torch.compile works"   # the cache key of the availability verdict


def _stack_step(params, P, g, moments, act, sensors, steps, hp, flags, applied):
    sums, P_new, updates = R.stack_update(P, g, moments, act, sensors, steps, hp, flags)
    R.write_back(params, applied, P_new, P, updates)
    return sums


def _adamw(p, g, m, v, m_decay, v_decay, step, skipped, hp, applied):
    return R.adamw_masked(p, g, m, v, m_decay, v_decay, step, skipped, hp, applied)


# One graph per static configuration: a model with more distinct stack or parameter shapes than dynamo's
# default recompile limit (8 per function) would otherwise fail hard in the middle of a step. The limits are
# raised only around this backend's own calls (``_graphs``), not for the process.
RECOMPILE_LIMIT = 1024


def _compile(fn: Callable) -> Callable:
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _graphs():
    """The dynamo limits this backend's calls run under: every shape its own graph, compiled once."""
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=RECOMPILE_LIMIT)


_compiled_stack_step = _compile(_stack_step)
_compiled_adamw = _compile(_adamw)


def _scalar(x: float, device) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, device=device)


def _matrix_hyper(hp: MatrixHyper, device) -> MatrixHyper:
    """``hp`` with its numbers as 0-D float64 tensors (the switches stay Python values)."""
    return MatrixHyper(lr=_scalar(hp.lr, device), weight_decay=_scalar(hp.weight_decay, device),
                       momentum=_scalar(hp.momentum, device), eps=_scalar(hp.eps, device), nesterov=hp.nesterov,
                       ns_steps=hp.ns_steps, units=hp.units, normuon_beta2=_scalar(hp.normuon_beta2, device))


def _run_step(stack: Stack, act: dict, sensors: torch.Tensor, steps, flags: R.StackFlags):
    """``reference.gated_matrix_stack``'s contract, through the compiled update."""
    P, g, moments = R.stacked(stack, flags)
    k, device = g.size(0), g.device
    applied = torch.isfinite(g.sum(dim=(-2, -1)))
    act = {name: torch.full((k,), value, dtype=torch.float64, device=device) if isinstance(value, float) else value
           for name, value in act.items()}
    sums = _compiled_stack_step(stack.params, P, g, moments, act, sensors, steps,
                                _matrix_hyper(stack.hyper, device), flags, applied)
    return sums, applied


def _adamw_step(p: torch.Tensor, grad: torch.Tensor, state: dict, hp: AdamWHyper, host_checks: bool = False):
    """``reference.adamw_step``'s contract, through the compiled update."""
    g = grad.detach().to(R.compute_dtype(p.dtype))
    device = g.device
    tensors = AdamWHyper(lr=_scalar(hp.lr, device), beta1=_scalar(hp.beta1, device), beta2=_scalar(hp.beta2, device),
                         eps=_scalar(hp.eps, device), weight_decay=_scalar(hp.weight_decay, device))
    # the decay products as (1,) views: inductor (torch 2.13, CPU) drops the in-place update of a 0-D float64
    # input, which a 1-element view does not suffer
    return _compiled_adamw(p.detach(), g, state["exp_avg"], state["exp_avg_sq"], state["m_decay_prod"].view(1),
                           state["v_decay_prod"].view(1), state["step"], state["skipped"], tensors,
                           torch.isfinite(g.sum()))


def _probe_fn(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


_probe = _compile(_probe_fn)


def available(cache: dict, device) -> bool:
    """Whether torch.compile works here (a one-op probe, compiled once per process); the verdict is kept in
    ``cache`` and a failure warned about once, in one line."""
    if _VERDICT not in cache:
        try:
            _probe(torch.zeros(2, device=device))
            cache[_VERDICT] = True
        except Exception as exc:   # no compiler, an old torch, a backend error: whatever stops compiling
            cache[_VERDICT] = False
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            warnings.warn(f"FusedGate backend='compiled': torch.compile is unavailable here ({type(exc).__name__}: "
                          f"{reason}); using the eager reference backend", RuntimeWarning, stacklevel=4)
    return cache[_VERDICT]


def gated_step(stacks: list[Stack], gate: Gate, *, iterate: Callable = R.polar_iteration,
               cache: dict | None = None) -> None:
    """Every stack's step with the compiled updates (see the module docstring), in place; the eager
    reference when compiling is unavailable."""
    cache = {} if cache is None else cache
    device = next((stack.params[0].device for stack in stacks if stack.params), torch.device("cpu"))
    if available(cache, device):
        with _graphs():
            R.step_stacks(stacks, gate, iterate, _run_step, _adamw_step)
    else:
        R.gated_step(stacks, gate, iterate=iterate, cache=cache)

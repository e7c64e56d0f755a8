"""The compiled backend: the reference backend with its per-tensor updates compiled as nanochat compiles its own.

``gated_step(stacks, gate, *, iterate, cache)`` — the signature of every backend — runs the reference
backend's orchestration (``reference.step_stacks``: the gate of all matrices at once, the sensor EMAs, the
step counts) with its two updates replaced by ``torch.compile(fullgraph=True, dynamic=False)`` functions:

    the gated update of one same-shape run   ``reference.stack_update`` + ``write_back``, over the stacked
                                             P, g and packed state (k, rows, cols)
    the AdamW update of one parameter        ``reference.adamw_masked``

The Newton–Schulz / Polar Express iteration inside the first is ``reference.polar_iteration_gemm``: the
same polynomial with its sums folded into the GEMMs (``baddbmm``), one pass over memory fewer per product
(3 % of a depth-2 NanoChat step on the CPU); a Triton ``iterate`` is used as given.

Hyperparameters (lr, momentum, eps, weight decay, betas, NorMuon's decay) and the actuators enter as 0-D /
(k,) float64 tensors, so a schedule causes no recompile; what is static — shapes, dtypes, the engine's
switches, ns_steps, nesterov, units, which directions the poles use — is specialised (one graph each). Every
step is computed masked (no host read of the finiteness flags), so rounding differs from the eager CPU
path by an ulp here and there: the eager reference is the truth it is tested against (teacher-forced).

Compiling unavailable (no C++ compiler, an old torch, a backend error): one warning, then the eager
reference for the rest of that optimizer's life (the verdict is kept in the caller's ``cache``).
"""

from __future__ import annotations

import functools
import itertools
import operator
import types
import warnings
from collections.abc import Callable

import torch

from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.stack import AdamWHyper, Gate, MatrixHyper, Stack

_VERDICT = "compiled: torch.compile works"   # the cache key of the availability verdict


# The numbers a graph reads travel packed, one float64 tensor each for the hyperparameters and the
# actuators: every tensor argument is one more set of guards checked at every call.
MATRIX_NUMBERS = ("lr", "weight_decay", "momentum", "eps", "normuon_beta2")
ADAMW_NUMBERS = ("lr", "beta1", "beta2", "eps", "weight_decay")


def _stack_step(params, grads, moments, act_names, act_packed, sensors, steps, numbers, switches, flags):
    """Stacking, the finiteness flags, the update and the write-back in one graph: the stacked copies of
    P and g are fused into the update's first pass instead of being written and read again. ``act_packed``
    (len(act_names), k) the actuators; ``numbers`` (5,) the ``MATRIX_NUMBERS``; ``switches`` (nesterov,
    ns_steps, units)."""
    nesterov, ns_steps, units = switches
    hp = MatrixHyper(**dict(zip(MATRIX_NUMBERS, numbers.unbind(0))), nesterov=nesterov, ns_steps=ns_steps,
                     units=units)
    act = dict(zip(act_names, act_packed.unbind(0)))
    P, g = R.stacked_tensors(params, grads)
    applied = torch.isfinite(g.sum(dim=(-2, -1)))   # as in reference.gated_matrix_stack
    sums, P_new, updates = R.stack_update(P, g, moments, act, sensors, steps, hp, flags)
    R.write_back(params, applied, P_new, P, updates)
    return sums, applied


def _adamw(p, grad, m, v, m_decay, v_decay, step, skipped, numbers):
    """``reference.adamw_masked`` with the finiteness flag in the graph; ``numbers`` (5,) the ``ADAMW_NUMBERS``."""
    hp = AdamWHyper(**dict(zip(ADAMW_NUMBERS, numbers.unbind(0))))
    g = grad.to(m.dtype)
    applied = torch.isfinite(g.sum())   # as in reference.adamw_step
    return R.adamw_masked(p, g, m, v, m_decay, v_decay, step, skipped, hp, applied)


def _compile(fn: Callable) -> Callable:
    return torch.compile(fn, fullgraph=True, dynamic=False)


@functools.cache
def _graph(fn: Callable, key: tuple) -> Callable:
    """``fn`` compiled for one static configuration ``key``, on a copy of its code object of its own.

    dynamo keeps its compiled graphs on the code object and tries them in turn at every call, evaluating
    each one's guards until one passes: with one code object per configuration a call checks one set of
    guards, not the guards of every other shape first (a measurable share of a small model's step). And a
    model with more stack or parameter shapes than dynamo's recompile limit (8 graphs per code object) never
    reaches it, so the limits stay as the process has them (no config patch around every step)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{abs(hash(key)):x}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return _compile(copy)


def _numbers(hp, names: tuple[str, ...], device) -> torch.Tensor:
    """The fields ``names`` of ``hp`` as one (len(names),) float64 tensor."""
    values = operator.attrgetter(*names)(hp)
    return _host_numbers(tuple(map(float, values)) if len(names) > 1 else (float(values),), 1, device)


def _packed_actuators(act: dict, k: int, device) -> torch.Tensor:
    """The actuators (each a (k,) tensor or a float shared by the stack) as one (len(act), k) float64 tensor."""
    values = tuple(act.values())
    if all(map(isinstance, values, itertools.repeat(float))):
        return _host_numbers(values, k, device)
    return torch.stack([torch.full((k,), v, dtype=torch.float64, device=device) if isinstance(v, float) else v
                        for v in values])


@functools.lru_cache(maxsize=256)
def _host_numbers(values: tuple[float, ...], k: int, device) -> torch.Tensor:
    """``values`` as a float64 tensor, (len,) for k = 1 and each repeated k times, (len, k), otherwise. Kept
    while the values repeat (a constant lr, the poles of an unmeasured spec): no host-to-device copy per call.
    The graphs only read these tensors."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    return t if k == 1 else t.view(-1, 1).expand(-1, k)


def _run_step(stack: Stack, act: dict, sensors: torch.Tensor, steps, flags: R.StackFlags):
    """``reference.gated_matrix_stack``'s contract, through the compiled update."""
    k, p, hp = len(stack.params), stack.params[0], stack.hyper
    switches, names = (hp.nesterov, hp.ns_steps, hp.units), tuple(act)
    graph = _graph(_stack_step, (k, tuple(p.shape), p.dtype, p.device, flags, switches, names, steps is None))
    return graph(stack.params, stack.grads, R.packed_moments(stack, flags), names, _packed_actuators(act, k, p.device),
                 sensors, steps, _numbers(hp, MATRIX_NUMBERS, p.device), switches, flags)


def _adamw_step(p: torch.Tensor, grad: torch.Tensor, state: dict, hp: AdamWHyper, host_checks: bool = False):
    """``reference.adamw_step``'s contract, through the compiled update."""
    graph = _graph(_adamw, (tuple(p.shape), p.dtype, grad.dtype, p.device))
    # the decay products as (1,) views: inductor (torch 2.13, CPU) drops the in-place update of a 0-D float64
    # input, which a 1-element view does not suffer
    return graph(p.detach(), grad.detach(), state["exp_avg"], state["exp_avg_sq"], state["m_decay_prod"].view(1),
                 state["v_decay_prod"].view(1), state["step"], state["skipped"],
                 _numbers(hp, ADAMW_NUMBERS, p.device))


def _actuators(gate: Gate, sensors: torch.Tensor, steps, modulations: list) -> dict:
    """``gate.step_actuators``' contract: a measured gate through one compiled graph (OptBrain's modulation
    enters as tensors, so a changing modulation compiles nothing new); an unmeasured one as the reference
    computes it (host constants)."""
    if not gate.measures:
        return G.step_actuators(gate, sensors, steps, modulations)
    scale, clip, dampen = G.modulation_tensors(modulations, sensors.device)
    graph = _graph(G.measured_actuators, (gate.spec, gate.total_steps, tuple(sensors.shape), sensors.device))
    return graph(gate.spec, gate.global_state, sensors, steps, gate.total_steps, scale, clip, dampen)


def _observe(sensors: torch.Tensor, steps, spec, sums: torch.Tensor, applied: torch.Tensor) -> None:
    """``gate.observe_param`` through one compiled graph."""
    _graph(G.observe_param, (spec, tuple(sensors.shape), sensors.device))(sensors, steps, spec, sums, applied)


COMPILED = R.StepFunctions(run_step=_run_step, adamw=_adamw_step, actuators=_actuators, observe=_observe)


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
    iterate = R.polar_iteration_gemm if iterate is R.polar_iteration else iterate
    device = next((stack.params[0].device for stack in stacks if stack.params), torch.device("cpu"))
    if available(cache, device):
        R.step_stacks(stacks, gate, iterate, COMPILED)
    else:
        R.gated_step(stacks, gate, iterate=iterate, cache=cache)

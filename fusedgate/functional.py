"""The one seam between FusedGate and its backends: ``gated_step(stacks, gate, *, backend)``.

As in ``torch.optim``'s functional form, the optimizer gathers plain lists (``fusedgate.stack.Stack``:
params, grads, states, hyperparameters, OptBrain's modulation; ``Gate``: what the actuators are
computed from) and this function runs the step on them, in place. It takes no optimizer object.

Backends, one signature ``(stacks, gate, *, iterate, cache)``:
    ``reference``  ``fusedgate.reference.gated_step``: plain torch, the source of truth, the CPU path;
    ``triton``     ``fusedgate.kernels.backend.gated_step``: the fused kernels (CUDA, or CPU under
                   ``TRITON_INTERPRET=1``); it hands float64 parameters to the reference;
    ``compiled``   ``fusedgate.compiled.gated_step``: the reference's orchestration with its per-stack
                   updates ``torch.compile``d as nanochat compiles its own (the eager reference when
                   compiling is unavailable, with one warning);
    ``auto``       Triton for CUDA stacks when Triton is importable, the reference for the rest.
``iterate`` is the Newton–Schulz implementation (``reference.polar_iteration``, or the Triton kernels'
``polar_iteration_triton``); ``cache`` a dict the caller owns and keeps between steps (the Triton
backend's launch tables live there; the reference ignores it).

Before the stacks, once per step, ``advance_global(global_state, loss, spec, *, backend)`` counts the step and
folds the loss into the global sensors: ``gate.observe_loss``'s torch ops (about twenty launches on CUDA), or
one ``global_kernel`` launch where the kernels run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.spec import GateSpec
from fusedgate.stack import Gate, Stack

BACKENDS = ("auto", "reference", "triton", "compiled")
NEWTON_SCHULZ = ("torch", "triton")


@torch.no_grad()
def gated_step(stacks: Sequence[Stack], gate: Gate, *, backend: str = "reference",
               iterate: Callable = R.polar_iteration, cache: dict | None = None) -> None:
    """One FusedGate step of ``stacks`` (see the module docstring), in place (without autograd)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "compiled":
        from fusedgate import compiled

        compiled.gated_step(list(stacks), gate, iterate=iterate, cache=cache)
        return
    kernels = [stack for stack in stacks if _on_triton(stack, backend)]
    rest = [stack for stack in stacks if not _on_triton(stack, backend)]
    if kernels:
        triton_backend().gated_step(kernels, gate, iterate=iterate, cache=cache)
    if rest:
        R.gated_step(rest, gate, iterate=iterate, cache=cache)


@torch.no_grad()
def advance_global(global_state: torch.Tensor, loss: torch.Tensor | float | None, spec: GateSpec, *,
                   backend: str = "reference") -> torch.Tensor:
    """global step += 1 and, given a loss (a tensor of one element or a number), the loss sensors folded
    (``gate.observe_loss``), in place; returns the global state as it was (a refused step puts it back).
    With the Triton kernel where they run (``backend`` "triton" — "auto" or "compiled": on CUDA, with Triton)."""
    on_kernels = backend == "triton" or (backend in ("auto", "compiled") and global_state.is_cuda
                                         and triton_available())
    kernels = triton_backend() if on_kernels else None
    if kernels is not None and kernels.kernels_take(global_state.device):
        return kernels.advance_global(global_state, loss, spec)
    before = global_state.clone()
    global_state[G.G_STEP] += 1
    if loss is not None:
        G.observe_loss(global_state, torch.as_tensor(loss), spec)
    return before


def _on_triton(stack: Stack, backend: str) -> bool:
    if backend != "auto":
        return backend == "triton"
    return bool(stack.params) and stack.params[0].is_cuda and triton_available()


def newton_schulz(name: str) -> Callable:
    """The polynomial iteration ``name`` names: "torch" (``reference.polar_iteration``) or "triton"."""
    if name not in NEWTON_SCHULZ:
        raise ValueError(f"newton_schulz={name!r} is not one of {NEWTON_SCHULZ}")
    if name == "torch":
        return R.polar_iteration
    try:
        from fusedgate.kernels.newton_schulz import polar_iteration_triton
    except ImportError as exc:
        raise RuntimeError(f"newton_schulz='triton' needs Triton ({exc}); use newton_schulz='torch'") from None
    return polar_iteration_triton


def triton_backend():
    """``fusedgate.kernels.backend``, or a one-line RuntimeError when Triton is missing."""
    try:
        from fusedgate.kernels import backend
    except ImportError as exc:
        raise RuntimeError(f"backend='triton' needs Triton and fusedgate.kernels ({exc}); "
                           "install triton or use backend='reference'") from None
    return backend


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True

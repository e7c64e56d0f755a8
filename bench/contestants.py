"""The contestants: each builds its tensors for a workload and returns a step to time.

Optimizer steps (cases "matrix" and "nanochat"): params ~ N(0, 0.02²) and fixed gradients ~ N(0, 0.01²)
in the row's dtype; the optimizer's state is created by the warm-up steps. Bytes moved by design per
step (what an ideal single-pass kernel must move): read p, g, m, v and write p, m, v —

    bytes = Σ_params 2·|p| + |g| + 2·(|m| + |v|)        (|x| = numel · element size)

28 B/param for fp32 params with fp32 state; 22 B/param for bf16 params with FusedGate's fp32 state;
14 B/param for torch's AdamW on bf16 params, which keeps its state in the param dtype (it cannot hold
fp32 state for bf16 params). The eager reference is charged the same design bytes, so its GB/s is an
effective bandwidth.

Newton–Schulz (case "newton_schulz"): 5 quintic iterations on an n × n input, bf16 on CUDA (as the
optimizer runs it), fp32 on the CPU; charged ``workloads.ns_flops``.

Muon steps (the opt-in case "nanochat_muon"): the same params in nanochat's groups, one ``kind='muon'`` group per
shape; nanochat's compiled step is the baseline, FusedGate's ``nanochat()`` the contestant; charged the
orthogonalisation's flops (no design bytes: the step is bound by its matrix products).

A FusedGate backend that ``fusedgate.optimizer.BACKENDS`` lists beyond auto/reference/triton (a "compiled"
reference path, say) gets the AdamW-preset, gated and ``nanochat()`` contestants of its own.

A contestant that cannot run here raises :class:`Unavailable` with the reason; the suite reports it.
Triton contestants need a CUDA device; on the CPU they run only when asked (``interpreter=True``), under
Triton's interpreter, which checks that they run but times numpy, not a kernel.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusedgate import optimizer as O
from fusedgate import reference as R
from fusedgate.bench.nanochat_compiled import CompiledMuon
from fusedgate.bench.workloads import Workload, ns_flops
from fusedgate.nanochat.muon import MuonAdamW
from fusedgate.optimizer import FusedGate
from fusedgate.spec import GateSpec

NS_STEPS = 5
TOTAL_STEPS = 10_000  # for FusedGate's step-fraction sensor
STEP_CASES = ("matrix", "nanochat")
NS_CASES = ("newton_schulz",)
MUON_CASES = ("nanochat_muon",)
# nanochat's Muon hyperparameters for the matrix groups (its d12/d20 presets' weight decay)
MUON_GROUP = dict(lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=0.2)
# FusedGate backends beyond these get contestants of their own (e.g. a "compiled" reference path)
KNOWN_BACKENDS = ("auto", "reference", "triton")
# Where the Triton Newton–Schulz is looked for: (module, function), called as fn(x, steps).
TRITON_NS_LOCATIONS = (("fusedgate.kernels.newton_schulz", "newton_schulz_triton"),)


class Unavailable(Exception):
    """This contestant cannot run here; ``str(exc)`` says why."""


@dataclass
class Setup:
    """A ready contestant: ``step()`` does one unit of work; ``bytes_moved()`` is read after the warm-up."""

    step: Callable[[], object]
    bytes_moved: Callable[[], int]
    flops: int = 0
    check: Callable[[], float] | None = None  # relative error against the torch reference, if any


@dataclass(frozen=True)
class Contestant:
    """``build(workload, dtype, device, interpreter)`` returns a :class:`Setup`, or raises
    :class:`Unavailable`."""

    name: str
    description: str
    cases: tuple[str, ...]
    build: Callable[..., Setup]
    uses_triton: bool = False


# ---------------------------------------------------------------------------------------------- helpers
def gated_spec_without_ortho() -> GateSpec:
    """GateSpec.gated() with ω = 0 at both poles: sensors + gate + clip + update, no Newton–Schulz."""
    spec = GateSpec.gated()
    return spec.replace(
        aggressive=dataclasses.replace(spec.aggressive, ortho=0.0),
        conservative=dataclasses.replace(spec.conservative, ortho=0.0),
    )


def make_params(workload: Workload, dtype: torch.dtype, device: torch.device) -> list[torch.nn.Parameter]:
    generator = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in workload.shapes:
        p = torch.nn.Parameter((0.02 * torch.randn(shape, generator=generator, device=device)).to(dtype))
        p.grad = (0.01 * torch.randn(shape, generator=generator, device=device)).to(dtype)
        params.append(p)
    return params


def step_bytes(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Design bytes of one step: 2·|p| + |g| + 2·(|m| + |v|) per param (see the module docstring; |v| = 0 where
    the optimizer keeps no second moment, a FusedGate matrix at ω ≡ 1)."""
    total = 0
    for p in params:
        state = optimizer.state[p]
        if "exp_avg" not in state:
            raise RuntimeError("optimizer state is missing: bytes are read after the warm-up steps")
        moments = sum(state[key].nbytes for key in ("exp_avg", "exp_avg_sq") if key in state)
        total += 2 * p.nbytes + p.grad.nbytes + 2 * moments
    return total


def optimizer_setup(params, optimizer, loss: torch.Tensor | None = None) -> Setup:
    if loss is None:
        return Setup(step=optimizer.step, bytes_moved=lambda: step_bytes(params, optimizer))
    return Setup(step=lambda: optimizer.step(loss=loss), bytes_moved=lambda: step_bytes(params, optimizer))


def require_triton(device: torch.device, interpreter: bool = False):
    """The Triton backend module, or :class:`Unavailable` saying why not."""
    if device.type != "cuda" and not interpreter:
        raise Unavailable(f"Triton kernels need a CUDA device (this run is on {device.type})")
    try:
        backend = importlib.import_module("fusedgate.kernels.backend")
    except ImportError as exc:
        raise Unavailable(f"fusedgate.kernels.backend cannot be imported ({exc})") from None
    if device.type == "cpu" and not backend.INTERPRET:
        raise Unavailable("Triton's interpreter is off (TRITON_INTERPRET=0), so Triton cannot run on the CPU")
    return backend


def triton_newton_schulz(device: torch.device, interpreter: bool = False) -> Callable:
    require_triton(device, interpreter)
    tried = []
    for module_name, function_name in TRITON_NS_LOCATIONS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            tried.append(f"{module_name}: {exc}")
            continue
        if hasattr(module, function_name):
            return getattr(module, function_name)
        tried.append(f"{module_name} has no {function_name}()")
    raise Unavailable("no Triton Newton–Schulz found (" + "; ".join(tried) + ")")


# ---------------------------------------------------------------------------------------------- steps
def torch_adamw(**flags) -> Callable[[Workload, torch.dtype, torch.device], Setup]:
    def build(workload, dtype, device, interpreter=False):
        params = make_params(workload, dtype, device)
        try:
            optimizer = torch.optim.AdamW(
                params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, **flags
            )
        except (RuntimeError, ValueError) as exc:
            raise Unavailable(f"torch.optim.AdamW({flags}) refused: {exc}") from None
        return optimizer_setup(params, optimizer)

    return build


def fusedgate(
    spec_factory: Callable[[], GateSpec], backend: str
) -> Callable[[Workload, torch.dtype, torch.device], Setup]:
    def build(workload, dtype, device, interpreter=False):
        if backend == "triton":
            require_triton(device, interpreter)
        params = make_params(workload, dtype, device)
        optimizer = FusedGate(params, spec=spec_factory(), total_steps=TOTAL_STEPS, backend=backend)
        loss = torch.tensor(3.0, device=device)
        return optimizer_setup(params, optimizer, loss)

    return build


# ---------------------------------------------------------------------------------------------- Muon steps
def muon_groups(params: list[torch.nn.Parameter]) -> list[dict]:
    """nanochat's matrix param groups: one ``kind='muon'`` group per shape (as ``GPT.param_groups``)."""
    shapes = sorted({tuple(p.shape) for p in params})
    return [dict(kind="muon", params=[p for p in params if tuple(p.shape) == shape], **MUON_GROUP) for shape in shapes]


def muon_flops(workload: Workload) -> int:
    """The orthogonalisation's flops: ``ns_flops`` of each matrix (the step's elementwise work left out)."""
    return sum(ns_flops(rows, cols, MUON_GROUP["ns_steps"]) for rows, cols in workload.shapes)


def muon_step(make_optimizer: Callable[[list[dict]], torch.optim.Optimizer], triton: bool = False) -> Callable:
    """A Muon-case contestant: ``make_optimizer(groups)`` steps nanochat's matrix groups of the workload."""

    def build(workload, dtype, device, interpreter=False):
        if triton:
            require_triton(device, interpreter)
        params = make_params(workload, dtype, device)
        optimizer = make_optimizer(muon_groups(params))
        loss = torch.tensor(3.0, device=device)
        return Setup(step=lambda: optimizer.step(loss=loss), bytes_moved=lambda: 0, flops=muon_flops(workload))

    return build


def fusedgate_muon(backend: str) -> Callable:
    return muon_step(lambda groups: FusedGate(groups, spec=GateSpec.nanochat(), total_steps=TOTAL_STEPS,
                                              backend=backend), triton=backend == "triton")


# ---------------------------------------------------------------------------------------------- Newton–Schulz
def ns_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def ns_input(workload: Workload, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(0)
    return torch.randn(workload.shapes[0], generator=generator, device=device).to(ns_dtype(device))


def ns_setup(function: Callable, workload: Workload, device: torch.device) -> Setup:
    """Time ``function(x, NS_STEPS)``; its check is ‖out − ref‖ / ‖ref‖ against a float64 run of the
    same iteration on the same input."""
    x = ns_input(workload, device)
    rows, cols = workload.shapes[0]

    def check() -> float:
        reference = R.newton_schulz(x.double(), NS_STEPS, torch.float64)
        return float((function(x, NS_STEPS).double() - reference).norm() / reference.norm())

    return Setup(
        step=lambda: function(x, NS_STEPS),
        bytes_moved=lambda: 0,
        flops=ns_flops(rows, cols, NS_STEPS),
        check=check,
    )


def ns_torch(workload, dtype, device, interpreter=False) -> Setup:
    return ns_setup(lambda x, steps: R.newton_schulz(x, steps, ns_dtype(device)), workload, device)


def ns_triton(workload, dtype, device, interpreter=False) -> Setup:
    return ns_setup(triton_newton_schulz(device, interpreter), workload, device)


CORE_CONTESTANTS: tuple[Contestant, ...] = (
    Contestant("adamw_fused", "torch.optim.AdamW(fused=True)", STEP_CASES, torch_adamw(fused=True)),
    Contestant("adamw_foreach", "torch.optim.AdamW(foreach=True)", STEP_CASES, torch_adamw(foreach=True)),
    Contestant(
        "fg_adamw_triton",
        "FusedGate, GateSpec.adamw(), Triton backend",
        STEP_CASES,
        fusedgate(GateSpec.adamw, "triton"),
        uses_triton=True,
    ),
    Contestant(
        "fg_gated_triton",
        "FusedGate, default gated spec without orthogonalisation (sensors + gate + "
        "clip + update), Triton backend",
        STEP_CASES,
        fusedgate(gated_spec_without_ortho, "triton"),
        uses_triton=True,
    ),
    Contestant(
        "fg_gated_ref",
        "FusedGate, the same gated spec, reference backend (eager torch)",
        STEP_CASES,
        fusedgate(gated_spec_without_ortho, "reference"),
    ),
    Contestant(
        "fg_default_triton",
        "FusedGate, GateSpec.gated() (gate + Newton–Schulz blend), Triton backend",
        STEP_CASES,
        fusedgate(GateSpec.default, "triton"),
        uses_triton=True,
    ),
    Contestant("ns_torch", f"reference.newton_schulz, {NS_STEPS} steps, torch matmul", NS_CASES, ns_torch),
    Contestant(
        "ns_triton",
        f"fusedgate.kernels.newton_schulz.newton_schulz_triton, {NS_STEPS} steps",
        NS_CASES,
        ns_triton,
        uses_triton=True,
    ),
)



def muon_contestants() -> tuple[Contestant, ...]:
    """nanochat's Muon step, compiled and eager, and FusedGate's ``nanochat()`` on the Triton backend."""
    return (
        Contestant("nanochat_compiled", "nanochat's Muon step compiled as nanochat compiles it (per-stack "
                   "torch.compile(fullgraph=True, dynamic=False), 0-D hyperparameter tensors; CPU: dynamo "
                   "trace only)", MUON_CASES, muon_step(CompiledMuon)),
        Contestant("nanochat_eager", "fusedgate.nanochat.muon.MuonAdamW (eager; the training baseline)",
                   MUON_CASES, muon_step(MuonAdamW)),
        Contestant("fg_nanochat_triton", "FusedGate, GateSpec.nanochat(), Triton backend", MUON_CASES,
                   fusedgate_muon("triton"), uses_triton=True),
    )


def extra_backend_contestants(backends: tuple[str, ...] | None = None) -> tuple[Contestant, ...]:
    """For each FusedGate backend beyond auto/reference/triton (e.g. "compiled"), the AdamW preset, the gated
    step without orthogonalisation and ``nanochat()`` on that backend. ``backends``: by default
    ``fusedgate.optimizer.BACKENDS`` as it is now."""
    out = []
    for backend in (b for b in (O.BACKENDS if backends is None else backends) if b not in KNOWN_BACKENDS):
        out += [
            Contestant(f"fg_adamw_{backend}", f"FusedGate, GateSpec.adamw(), {backend} backend", STEP_CASES,
                       fusedgate(GateSpec.adamw, backend)),
            Contestant(f"fg_gated_{backend}", f"FusedGate, default gated spec without orthogonalisation, "
                       f"{backend} backend", STEP_CASES, fusedgate(gated_spec_without_ortho, backend)),
            Contestant(f"fg_nanochat_{backend}", f"FusedGate, GateSpec.nanochat(), {backend} backend", MUON_CASES,
                       fusedgate_muon(backend)),
        ]
    return tuple(out)


CONTESTANTS = CORE_CONTESTANTS + muon_contestants() + extra_backend_contestants()
BASELINE = {"matrix": "adamw_fused", "nanochat": "adamw_fused", "newton_schulz": "ns_torch",
            "nanochat_muon": "nanochat_compiled"}


def by_name(names: list[str] | None = None) -> list[Contestant]:
    """The contestants with these names (all when None); an unknown name raises ValueError."""
    if not names:
        return list(CONTESTANTS)
    known = {c.name: c for c in CONTESTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown contestant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]

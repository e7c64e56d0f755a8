"""FusedGate: a ``torch.optim.Optimizer`` whose matrix update is blended by a training-phase gate.

Which parameters are gated
--------------------------
* groups with ``kind='muon'`` (nanochat's format): gated, in Muon units (lr, momentum, ns_steps,
  weight_decay and, when the spec's NorMuon is on, the NorMuon decay ``beta2`` from the group);
* groups with ``kind='adamw'``: plain AdamW with the group's lr, betas, eps, weight_decay;
* groups without ``kind`` (``model.parameters()``, ``model.named_parameters()``): params with
  ndim ≥ 2 are gated in the spec's units, except those whose name contains one of ``adamw_names``
  (embeddings and output heads, recognisable only when names are given); every other param gets AdamW.

Group hyperparameters live in ``param_groups`` (LR schedulers work); the spec supplies their defaults
and holds the engine switches, the sensors' decays, the gate and the poles. Parameters of one shape
in a group are updated as one stack (as nanochat does), each matrix orthogonalised on its own.
``step(loss=...)`` takes the loss as a 0-d tensor
and never reads it on the host: nothing inside ``step()`` synchronises with the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from fusedgate import checks as C
from fusedgate import distributed as D
from fusedgate import fsdp, state_checks
from fusedgate import functional as F
from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.spec import GateSpec
from fusedgate.stack import AdamWHyper, Gate, MatrixHyper, Modulation, Stack, uses

KINDS = (None, "adamw", "muon")
DEFAULT_ADAMW_NAMES = ("embed", "wte", "wpe", "lm_head")
BACKENDS = F.BACKENDS
STATE_FORMAT = state_checks.STATE_FORMAT


def gated_by_kind(group: dict) -> bool | None:
    """A group's ``kind`` decides for all its params: "muon" gated, "adamw" not; None for any other group."""
    return {"muon": True, "adamw": False}.get(group.get("kind"))


class FusedGate(torch.optim.Optimizer):
    """Gated Adam/Muon for matrix params, AdamW for the rest.

    Args:
        params: an iterable of tensors, of (name, tensor) pairs, or of param-group dicts.
        spec: the :class:`GateSpec` (defaults for the groups, sensors, gate, poles).
        total_steps: the planned number of steps, for the step-fraction sensor (None: that sensor reads 0).
        backend: "auto" (Triton for CUDA tensors, the reference otherwise), "reference", "triton" or "compiled"
            (the reference's updates under torch.compile, as nanochat compiles its own; see fusedgate.compiled).
        adamw_names: name fragments that send a matrix param to AdamW when names are known.
        distributed: "auto" (a single process; with more than one rank the first step decides, as nanochat
            does: identical gradients on every rank → "replicated", else → "zero2"), "replicated" (the model
            is wrapped in DDP) or "zero2" (FusedGate averages the gradients and shards its state); see
            ``fusedgate.distributed``. With FSDP2 (``fully_shard``: DTensor parameters sharded on dim 0) "auto"
            (or "fsdp2") steps the local shards and orthogonalises each whole matrix once (``fusedgate.fsdp``).
        process_group: the ranks that share the data-parallel work (None: the default group; under FSDP2 the
            parameters' device mesh decides).
        newton_schulz: the orthogonaliser's polynomial iteration, "torch" (matmuls) or "triton" (the symmetric
            Triton kernels of ``fusedgate.kernels.newton_schulz``).
    """

    def __init__(self, params, spec: GateSpec | None = None, total_steps: int | None = None,
                 backend: str = "auto", adamw_names: Iterable[str] = DEFAULT_ADAMW_NAMES,
                 distributed: str = "auto", process_group=None, newton_schulz: str = "torch"):
        spec = GateSpec.default() if spec is None else spec
        if not isinstance(spec, GateSpec):
            raise TypeError(f"spec must be a GateSpec, got {type(spec).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
        F.newton_schulz(newton_schulz)   # fail now, clearly, on a bad name or a missing Triton
        self.spec = spec
        self.total_steps = C.check_total_steps(total_steps)
        self.backend = backend
        self.newton_schulz = newton_schulz
        self.adamw_names = tuple(adamw_names)
        self._global: torch.Tensor | None = None
        self._cache: dict = {}   # the Triton backend's launch tables (not copied: rebuilt on a copy's first step)
        defaults = dict(
            kind=None, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps,
            weight_decay=spec.weight_decay, momentum=spec.momentum, nesterov=spec.nesterov,
            ns_steps=spec.ns_steps, beta2=spec.normuon_beta2, gate_scale=1.0, gate_clip=1.0, gate_dampen=0.0,
        )
        super().__init__(params, defaults)
        mesh = fsdp.mesh_of([p for group in self.param_groups for p in group["params"]])
        # None: a single process; FSDP2 (DTensor parameters): fsdp.Fsdp2, whatever the world size
        self._sync = D.setup(self, distributed, process_group) if mesh is None else \
            fsdp.setup(mesh, distributed, process_group)
        self._carry_header()
        if backend == "triton":
            F.triton_backend()  # fail now, clearly, if Triton is missing

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        """torch's add_param_group plus FusedGate's checks; a rejected group leaves ``param_groups`` as it was."""
        kind = param_group.get("kind")
        if kind not in KINDS:
            raise ValueError(f"param group kind={kind!r}: expected 'adamw', 'muon' or none")
        has_beta2 = "beta2" in param_group   # before torch fills in the defaults
        super().add_param_group(param_group)
        try:
            self._check_group(len(self.param_groups) - 1, self.param_groups[-1], has_beta2)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def _check_group(self, index: int, group: dict, has_beta2: bool) -> None:
        kind = group.get("kind")
        for p in group["params"]:
            fsdp.check_placement(p)
            if p.is_complex():
                raise TypeError("FusedGate does not support complex parameters; view them as real "
                                "(torch.view_as_real) first")
            if p.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
                raise TypeError(f"FusedGate takes float32/bfloat16/float16/float64 parameters, got {p.dtype}")
            if kind == "muon" and p.ndim < 2:
                raise ValueError(f"a kind='muon' group holds a {p.ndim}-D parameter of shape {tuple(p.shape)}; "
                                 "Muon groups take matrices only")
        fsdp.mesh_of([p for g in self.param_groups for p in g["params"]])   # FSDP2 and plain mixed: refused
        if kind == "muon" and self.spec.normuon and not has_beta2:
            raise ValueError("a kind='muon' param group needs 'beta2' (the NorMuon decay) while the spec's "
                             "normuon is on")
        gated = any(self.is_gated(group, i, p) for i, p in enumerate(group["params"]))
        C.check_group(f"param group {index}", group, orthogonalises=gated and uses(self.spec)[0])
        if self.spec.orthogonaliser == "polar_express" and group["ns_steps"] > len(R.POLAR_EXPRESS):
            raise ValueError(f"param group ns_steps={group['ns_steps']}: orthogonaliser='polar_express' has "
                             f"{len(R.POLAR_EXPRESS)} coefficient triples")

    def is_gated(self, group: dict, index: int, p: torch.Tensor) -> bool:
        """Whether parameter ``index`` of ``group`` gets the gated update (else AdamW)."""
        by_kind = gated_by_kind(group)
        if by_kind is not None:
            return by_kind
        if p.ndim < 2:
            return False
        names = group.get("param_names")
        return not (names and any(fragment in names[index] for fragment in self.adamw_names))

    def _units(self, group: dict) -> str:
        return "muon" if group.get("kind") == "muon" else self.spec.units

    def param_name(self, group_index: int, group: dict, index: int) -> str:
        """Parameter ``index`` of group ``group_index``: its name when names were given, else groupG.paramI."""
        names = group.get("param_names")
        return names[index] if names else f"group{group_index}.param{index}"

    # ------------------------------------------------------------------ step
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, loss: torch.Tensor | float | None = None):
        """One optimizer step. ``loss`` (0-d tensor or float) feeds the loss sensors; when omitted,
        the closure's loss is used, and without either the loss sensors keep their values.

        Under ``torch.compile`` the step always runs eagerly (a graph break): its state is created and
        advanced by Python code and host-side facts that tracing would freeze into the graph."""
        closure_loss = None
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
        loss = closure_loss if loss is None else loss
        C.check_loss(loss)
        for gi, group in enumerate(self.param_groups):
            C.check_scheduled(f"param group {gi}", group)   # what a scheduler may have written
        device = next((p.device for group in self.param_groups for p in group["params"]), torch.device("cpu"))
        # a spec that reads no sensor has no use for the loss: it is neither averaged over ranks nor observed
        sensed_loss = loss if self.reads_sensors else None
        sync = self._sync

        # Phase 1: launch the reduces — the loss average over the ranks; zero2: the gradients' reduce-scatters
        if sync is not None:
            sync.launch(self, sensed_loss, device)

        # Phase 2: wait for them (zero2: step the sliced AdamW elements at once and launch their all-gathers),
        # fold the loss into the global sensors, then one functional step over plain lists of what this rank owns
        gate, before = self._gate(sensed_loss, device)
        try:
            if sync is not None:
                sync.wait(self, lambda stacks: self._compute(stacks, gate))
            if isinstance(sync, fsdp.Fsdp2):
                sync.compute(self, self._stacks(None), gate)   # the local shards, whole matrices orthogonalised once
            else:
                self._compute(self._stacks(sync.owns if sync is not None else None), gate)
        except Exception:
            self._global.copy_(before)   # a refused step leaves the step count and the loss sensors as they were
            raise

        # Phase 3: zero2 — launch the all-gathers of the updated parameters, wait, copy them back
        if sync is not None:
            sync.gather(self)
        return closure_loss

    def _gate(self, sensed_loss, device) -> tuple[Gate, torch.Tensor]:
        """Advance the global step (and, with a loss, the loss sensors); this step's :class:`Gate` and the
        global state as it was before."""
        if self._global is None:
            self._global = G.new_global_state(device)
        averaged = None
        if sensed_loss is not None:
            averaged = self._sync.averaged_loss() if self._sync is not None else sensed_loss
        before = F.advance_global(self._global, averaged, self.spec, backend=self.backend)
        return Gate(self.spec, self._global, self.total_steps, self.reads_sensors), before

    def _compute(self, stacks: list[Stack], gate: Gate) -> None:
        if stacks:
            F.gated_step(stacks, gate, backend=self.backend, iterate=F.newton_schulz(self.newton_schulz),
                         cache=self._cache)

    def _stacks(self, owns: Callable[[torch.Tensor], bool] | None) -> list[Stack]:
        """Per group, the gated matrices and the AdamW params that have a gradient (and that this rank owns),
        as plain lists; their state created (or completed) on the way."""
        stacks = []
        second_moment = uses(self.spec)[1]
        for group in self.param_groups:
            gated, plain = [], []
            by_kind = gated_by_kind(group)   # decided for the whole group, or per parameter (None)
            for index, p in enumerate(group["params"]):
                if p.grad is None or (owns is not None and not owns(p)):
                    continue
                if p.grad.is_sparse:
                    raise TypeError("FusedGate does not support sparse gradients")
                is_gated = by_kind if by_kind is not None else self.is_gated(group, index, p)
                (gated if is_gated else plain).append(p)
            if gated:
                stacks.append(Stack(gated, [p.grad for p in gated],
                                    [self._state_of(p, True, second_moment) for p in gated],
                                    MatrixHyper.of(group, self._units(group)), self._modulation(group)))
            if plain:
                stacks.append(Stack(plain, [p.grad for p in plain],
                                    [self._state_of(p, False, second_moment) for p in plain], AdamWHyper.of(group)))
        return stacks

    def _state_of(self, p: torch.Tensor, gated: bool, second_moment: bool) -> dict:
        """p's state, created on its first step; completed when the spec now needs what it lacks (NorMuon's
        moment, the second moment of a pole with ω < 1: ``second_moment``) and rid of an ``exp_avg_sq``
        nothing reads."""
        state = self.state[p]
        if not state:
            state.update(R.new_matrix_state(p, R.Engine.of(self.spec), second_moment) if gated
                         else R.new_adamw_state(p))
        elif gated:
            if self.spec.normuon and "normuon_sq" not in state:
                state["normuon_sq"] = R.new_normuon_state(p)   # the spec switched NorMuon on
            if second_moment and "exp_avg_sq" not in state:   # the spec now gives the Adam direction weight
                state["exp_avg_sq"] = R.new_second_moment(p)
                state["v_decay_prod"] = torch.ones((), dtype=torch.float64, device=p.device)
            elif not second_moment:
                state.pop("exp_avg_sq", None)
        elif "skipped" not in state:   # a state from before AdamW skips were counted
            state["skipped"] = torch.zeros((), dtype=torch.float32, device=p.device)
        return state

    @staticmethod
    def _modulation(group: dict) -> Modulation:
        """OptBrain's per-group (gate_scale, gate_clip, gate_dampen)."""
        return Modulation(float(group["gate_scale"]), float(group["gate_clip"]), float(group["gate_dampen"]))

    @property
    def reads_sensors(self) -> bool:
        """Whether anything reads the sensors: a live gate (poles differ), a trust ratio (τ > 0) or a clip
        (k < ∞). Otherwise — nanochat, muon, adamw — the reference path skips their reductions, the gate
        stays unevaluated (recorded as 0), the loss is not observed, and ``gate_state`` reports the actuators
        with the sensors as they were."""
        pole = self.spec.aggressive
        return not self.spec.is_inert or pole.trust_mix > 0 or pole.clip < math.inf

    # ------------------------------------------------------------------ logging
    def gate_state(self) -> dict[str, dict]:
        """Per gated parameter: gate, actuators, normalised sensors, skipped steps (synchronises: for logging)."""
        out = {}
        if self._global is None:
            return out
        for gi, group in enumerate(self.param_groups):
            for index, p in enumerate(group["params"]):
                state = self.state.get(p)
                if not state or "sensors" not in state:
                    continue
                normalised = G.normalised_sensors(self._global, state["sensors"], state["step"], self.total_steps)
                out[self.param_name(gi, group, index)] = G.describe(state["sensors"], normalised)
        return out

    def skipped_steps(self) -> dict[str, int]:
        """Per parameter with state, the steps skipped because its gradient was not finite (synchronises)."""
        out = {}
        for gi, group in enumerate(self.param_groups):
            for index, p in enumerate(group["params"]):
                state = self.state.get(p)
                if state:
                    count = state["sensors"][G.S_SKIPPED] if "sensors" in state else state.get("skipped", 0.0)
                    out[self.param_name(gi, group, index)] = int(count)
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        self._carry_header()
        sd = super().state_dict()
        sd["fusedgate"] = self._header()
        return self._sync.gather_state(self, sd) if self._sync is not None else sd

    def _header(self) -> dict:
        """The state_dict's ``fusedgate`` section: format, spec, total_steps, global (loss and step) state."""
        global_state = self._global if self._global is not None else G.new_global_state("cpu")
        return {"format": STATE_FORMAT, "spec": self.spec.to_dict(), "total_steps": self.total_steps,
                "global": global_state.clone()}

    def _carry_header(self) -> None:
        """Under FSDP2, param group 0 carries the ``fusedgate`` section (refreshed by ``state_dict``): DCP's
        ``get_optimizer_state_dict`` keeps only "state" and "param_groups", and its flattened form
        (``flatten_optimizer_state_dict``, torchtitan's) restores only the keys the live groups have."""
        if isinstance(self._sync, fsdp.Fsdp2) and self.param_groups:
            self.param_groups[0]["fusedgate"] = self._header()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a FusedGate state_dict. Everything is validated (``fusedgate.state_checks``) before anything
        changes; state tensors keep their saved dtypes (fp32 moments for bf16 params, float64 decay products).
        A ``step`` saved as a Python number (torch's older format) is read as a tensor; an ``exp_avg_sq``
        the loaded spec never reads (no pole gives ω < 1) is dropped."""
        state_dict = fsdp.lift_header(state_dict)   # an FSDP2 state_dict through DCP carries it in group 0
        spec, id_to_param = state_checks.check_state_dict(state_dict, self.param_groups, self.is_gated)
        extra = state_dict["fusedgate"]
        # Validated: let torch load the groups (hyperparameters) with no state, then place the state ourselves.
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        second_moment = uses(spec)[1]
        for pid, pstate in state_dict.get("state", {}).items():
            p = id_to_param[pid]
            unread = "sensors" in pstate and not second_moment
            state = {k: fsdp.to_placement(torch.as_tensor(v).detach().to(device=p.device, copy=True), p)
                     for k, v in pstate.items() if not (k == "exp_avg_sq" and unread)}
            state["step"] = state["step"].to(torch.float32)
            for key in ("m_decay_prod", "v_decay_prod"):
                state[key] = state[key].to(torch.float64)
            self.state[p] = state
        self.spec = spec
        self.total_steps = extra["total_steps"]
        device = next((p.device for group in self.param_groups for p in group["params"]), torch.device("cpu"))
        self._global = extra["global"].detach().to(device=device, dtype=torch.float32, copy=True)
        if self._sync is not None:
            self._sync.drop_unowned(self)   # zero2: keep the state this rank owns
        self._carry_header()

    # ------------------------------------------------------------------ copying
    def __getstate__(self) -> dict:
        """torch's Optimizer pickles defaults, state and param groups only; FusedGate's own attributes go too,
        so that ``copy.deepcopy`` and pickling give an optimizer that can step."""
        return {**super().__getstate__(), **{key: self.__dict__[key] for key in _OWN_ATTRIBUTES}}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("newton_schulz", "torch")   # pickled before it existed
        self._cache = {}


_OWN_ATTRIBUTES = ("spec", "total_steps", "backend", "newton_schulz", "adamw_names", "_global", "_sync")

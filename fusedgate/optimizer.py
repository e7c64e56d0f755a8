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

from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.spec import GateSpec

KINDS = (None, "adamw", "muon")
DEFAULT_ADAMW_NAMES = ("embed", "wte", "wpe", "lm_head")
BACKENDS = ("auto", "reference", "triton")
STATE_FORMAT = 1


class FusedGate(torch.optim.Optimizer):
    """Gated Adam/Muon for matrix params, AdamW for the rest.

    Args:
        params: an iterable of tensors, of (name, tensor) pairs, or of param-group dicts.
        spec: the :class:`GateSpec` (defaults for the groups, sensors, gate, poles).
        total_steps: the planned number of steps, for the step-fraction sensor (None: that sensor reads 0).
        backend: "auto" (Triton for CUDA tensors, the reference otherwise), "reference" or "triton".
        adamw_names: name fragments that send a matrix param to AdamW when names are known.
    """

    def __init__(self, params, spec: GateSpec | None = None, total_steps: int | None = None,
                 backend: str = "auto", adamw_names: Iterable[str] = DEFAULT_ADAMW_NAMES):
        spec = GateSpec.default() if spec is None else spec
        if not isinstance(spec, GateSpec):
            raise TypeError(f"spec must be a GateSpec, got {type(spec).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps <= 0):
            raise ValueError(f"total_steps={total_steps!r} must be a positive int or None")
        self.spec = spec
        self.total_steps = total_steps
        self.backend = backend
        self.adamw_names = tuple(adamw_names)
        self._global: torch.Tensor | None = None
        defaults = dict(
            kind=None, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps,
            weight_decay=spec.weight_decay, momentum=spec.momentum, nesterov=spec.nesterov,
            ns_steps=spec.ns_steps, beta2=spec.normuon_beta2, gate_scale=1.0, gate_clip=1.0, gate_dampen=0.0,
        )
        super().__init__(params, defaults)
        if backend == "triton":
            self._triton_backend()  # fail now, clearly, if Triton is missing

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        """torch's add_param_group plus FusedGate's checks; a rejected group leaves ``param_groups`` as it was."""
        kind = param_group.get("kind")
        if kind not in KINDS:
            raise ValueError(f"param group kind={kind!r}: expected 'adamw', 'muon' or none")
        has_beta2 = "beta2" in param_group   # before torch fills in the defaults
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1], has_beta2)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def _check_group(self, group: dict, has_beta2: bool) -> None:
        kind = group.get("kind")
        for p in group["params"]:
            if p.is_complex():
                raise TypeError("FusedGate does not support complex parameters; view them as real "
                                "(torch.view_as_real) first")
            if kind == "muon" and p.ndim < 2:
                raise ValueError(f"a kind='muon' group holds a {p.ndim}-D parameter of shape {tuple(p.shape)}; "
                                 "Muon groups take matrices only")
        if kind == "muon" and self.spec.normuon and not has_beta2:
            raise ValueError("a kind='muon' param group needs 'beta2' (the NorMuon decay) while the spec's "
                             "normuon is on")
        if self.spec.orthogonaliser == "polar_express" and group["ns_steps"] > len(R.POLAR_EXPRESS):
            raise ValueError(f"param group ns_steps={group['ns_steps']}: orthogonaliser='polar_express' has "
                             f"{len(R.POLAR_EXPRESS)} coefficient triples")

    def is_gated(self, group: dict, index: int, p: torch.Tensor) -> bool:
        """Whether parameter ``index`` of ``group`` gets the gated update (else AdamW)."""
        kind = group.get("kind")
        if kind == "adamw":
            return False
        if kind == "muon":
            return True
        if p.ndim < 2:
            return False
        names = group.get("param_names")
        return not (names and any(fragment in names[index] for fragment in self.adamw_names))

    def _units(self, group: dict) -> str:
        return "muon" if group.get("kind") == "muon" else self.spec.units

    def _param_name(self, group_index: int, group: dict, index: int) -> str:
        names = group.get("param_names")
        return names[index] if names else f"group{group_index}.param{index}"

    # ------------------------------------------------------------------ backend
    def _use_triton(self, p: torch.Tensor) -> bool:
        if self.backend == "reference":
            return False
        if self.backend == "triton":
            return True
        return p.is_cuda and _triton_available()

    def _triton_backend(self):
        try:
            from fusedgate.kernels import backend as triton_backend
        except ImportError as exc:
            raise RuntimeError(f"backend='triton' needs Triton and fusedgate.kernels ({exc}); "
                               "install triton or use backend='reference'") from None
        return triton_backend

    # ------------------------------------------------------------------ step
    def _global_state(self, device) -> torch.Tensor:
        if self._global is None:
            self._global = G.new_global_state(device)
        return self._global

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, loss: torch.Tensor | float | None = None):
        """One optimizer step. ``loss`` (0-d tensor or float) feeds the loss sensors; when omitted,
        the closure's loss is used, and without either the loss sensors keep their values."""
        closure_loss = None
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
        if loss is None:
            loss = closure_loss

        device = next((p.device for group in self.param_groups for p in group["params"]), torch.device("cpu"))
        global_state = self._global_state(device)
        global_state[G.G_STEP] += 1
        if loss is not None:
            G.observe_loss(global_state, torch.as_tensor(loss), self.spec)

        engine = R.Engine.of(self.spec)
        for group in self.param_groups:
            gated, plain = [], []
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("FusedGate does not support sparse gradients")
                is_gated = self.is_gated(group, index, p)
                state = self.state[p]
                if not state:
                    state.update(R.new_matrix_state(p, engine) if is_gated else R.new_adamw_state(p))
                elif is_gated and engine.normuon and "normuon_sq" not in state:
                    state["normuon_sq"] = R.new_normuon_state(p)   # the spec switched NorMuon on
                (gated if is_gated else plain).append((p, state))
            if gated:
                self._gated_group(group, gated, global_state)
            if plain:
                self._adamw_group(group, plain)
        return closure_loss

    def _hyper(self, group: dict) -> R.MatrixHyper:
        units = self._units(group)
        momentum = group["momentum"] if units == "muon" else group["betas"][0]
        return R.MatrixHyper(lr=float(group["lr"]), weight_decay=float(group["weight_decay"]),
                             momentum=float(momentum), eps=float(group["eps"]), nesterov=bool(group["nesterov"]),
                             ns_steps=int(group["ns_steps"]), units=units, normuon_beta2=float(group["beta2"]))

    def _gated_group(self, group: dict, items: list, global_state: torch.Tensor) -> None:
        spec = self.spec
        hp = self._hyper(group)
        engine = R.Engine.of(spec)
        use_ortho = max(spec.aggressive.ortho, spec.conservative.ortho) > 0
        use_adam = min(spec.aggressive.ortho, spec.conservative.ortho) < 1
        use_clip = min(spec.aggressive.clip, spec.conservative.clip) < math.inf
        modulation = (float(group["gate_scale"]), float(group["gate_clip"]), float(group["gate_dampen"]))
        if items and self._use_triton(items[0][0]):
            self._triton_backend().gated_group(self, items, hp, engine, global_state, modulation,
                                               use_ortho, use_clip, use_adam)
            return
        # The gate and the sensor EMAs are computed for all matrices of the group at once; the update
        # for each run of same-shape matrices at once.
        states = [state for _, state in items]
        sensors = torch.stack([state["sensors"] for state in states])
        steps = torch.stack([state["step"] for state in states])   # before this step
        act = self._actuators(sensors, steps, global_state, modulation)
        device = items[0][0].device
        flags = R.StackFlags(ortho=use_ortho, clip=use_clip, adam=use_adam, host_checks=device.type == "cpu")
        ns_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        sums = torch.empty(len(items), len(G.SUMS), dtype=torch.float32, device=device)
        applied = torch.empty(len(items), dtype=torch.bool, device=device)
        for index in _same_shape_runs(items):
            params = [items[i][0] for i in index]
            contiguous = index == list(range(index[0], index[-1] + 1))
            at = slice(index[0], index[-1] + 1) if contiguous else torch.tensor(index, device=device)
            s, a = R.gated_matrix_stack(params, [states[i] for i in index], hp, engine,
                                        {k: v[at] for k, v in act.items()}, sensors[at], steps[at], flags, ns_dtype)
            sums[at] = s
            applied[at] = a
        G.observe_param(sensors, steps, spec, sums, applied)
        torch._foreach_copy_([state["sensors"] for state in states], list(sensors.unbind(0)))

    def _actuators(self, sensors: torch.Tensor, steps: torch.Tensor, global_state: torch.Tensor,
                   modulation) -> dict[str, torch.Tensor]:
        """This step's gate and actuators for parameters with sensors ``[P, N_SLOTS]``; recorded in them."""
        scale, clip, dampen = modulation
        normalised = G.normalised_sensors(global_state, sensors, steps, self.total_steps)
        g = G.gate_value(self.spec, normalised, dampen)
        act = G.actuators(self.spec, g, scale, clip)
        sensors[:, G.S_GATE] = g
        for name, slot in G.ACTUATOR_SLOTS.items():
            sensors[:, slot] = act[name].float()
        return act

    def _adamw_group(self, group: dict, items: list) -> None:
        lr, betas, eps, wd = float(group["lr"]), group["betas"], float(group["eps"]), float(group["weight_decay"])
        if items and self._use_triton(items[0][0]):
            self._triton_backend().adamw_group(self, items, lr, betas, eps, wd)
            return
        for p, state in items:
            R.adamw_step(p, p.grad, state, lr, betas, eps, wd)

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
                out[self._param_name(gi, group, index)] = G.describe(state["sensors"], normalised)
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        sd = super().state_dict()
        global_state = self._global if self._global is not None else G.new_global_state("cpu")
        sd["fusedgate"] = {"format": STATE_FORMAT, "spec": self.spec.to_dict(), "total_steps": self.total_steps,
                           "global": global_state.clone()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a FusedGate state_dict. Everything is validated before anything changes; state tensors keep
        their saved dtypes (fp32 moments for bf16 params, float64 decay products)."""
        extra = state_dict.get("fusedgate")
        if not isinstance(extra, dict) or extra.get("format") != STATE_FORMAT:
            raise ValueError("not a FusedGate state_dict (missing or unknown 'fusedgate' section)")
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, this optimizer has "
                             f"{len(self.param_groups)}")
        id_to_param, id_to_role = {}, {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param group {gi} has {len(saved['params'])} params in the state_dict, "
                                 f"{len(group['params'])} here")
            for index, (pid, p) in enumerate(zip(saved["params"], group["params"])):
                id_to_param[pid] = p
                id_to_role[pid] = self.is_gated(group, index, p)
        for pid, pstate in state_dict.get("state", {}).items():
            if pid not in id_to_param:
                raise ValueError(f"state_dict holds state for an unknown parameter id {pid}")
            p = id_to_param[pid]
            if tuple(pstate["exp_avg"].shape) != tuple(p.shape):
                raise ValueError(f"parameter {pid}: saved state has shape {tuple(pstate['exp_avg'].shape)}, "
                                 f"the parameter has {tuple(p.shape)}")
            if ("sensors" in pstate) != id_to_role[pid]:
                raise ValueError(f"parameter {pid}: saved as {'gated' if 'sensors' in pstate else 'AdamW'}, "
                                 f"here it is {'gated' if id_to_role[pid] else 'AdamW'}")
        spec = GateSpec.from_dict(extra["spec"])

        # Validated: let torch load the groups (hyperparameters) with no state, then place the state ourselves.
        super().load_state_dict({"state": {}, "param_groups": saved_groups})
        for pid, pstate in state_dict.get("state", {}).items():
            p = id_to_param[pid]
            self.state[p] = {k: v.detach().to(device=p.device, copy=True) if torch.is_tensor(v) else v
                             for k, v in pstate.items()}
        self.spec = spec
        self.total_steps = extra["total_steps"]
        device = next((p.device for group in self.param_groups for p in group["params"]), torch.device("cpu"))
        self._global = extra["global"].detach().to(device=device, dtype=torch.float32, copy=True)


def _same_shape_runs(items: list) -> list[list[int]]:
    """Indices of ``items`` grouped by parameter shape (first-seen order)."""
    runs: dict[tuple, list[int]] = {}
    for i, (p, _) in enumerate(items):
        runs.setdefault(tuple(p.shape), []).append(i)
    return list(runs.values())


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True

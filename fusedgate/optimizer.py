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

from fusedgate import distributed as D
from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.spec import GateSpec, SpecError

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
        distributed: "auto" (a single process; refused when torch.distributed runs more than one rank),
            "replicated" (the model is wrapped in DDP) or "zero2" (FusedGate averages the gradients and
            shards its state); see ``fusedgate.distributed``.
        process_group: the ranks that share the data-parallel work (None: the default group).
    """

    def __init__(self, params, spec: GateSpec | None = None, total_steps: int | None = None,
                 backend: str = "auto", adamw_names: Iterable[str] = DEFAULT_ADAMW_NAMES,
                 distributed: str = "auto", process_group=None):
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
        self._sync = D.setup(self, distributed, process_group)   # None: a single process
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
            D.refuse_dtensor(p)
            if p.is_complex():
                raise TypeError("FusedGate does not support complex parameters; view them as real "
                                "(torch.view_as_real) first")
            if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise TypeError(f"FusedGate computes in float32 and would round {p.dtype} parameters every step: "
                                "use float32/bfloat16/float16 parameters, or torch.optim for float64")
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
        if loss is None:
            loss = closure_loss
        if torch.is_tensor(loss) and loss.numel() != 1:
            raise ValueError(f"step(loss=...) takes a scalar (a 0-d tensor or a float), got a tensor of shape "
                             f"{tuple(loss.shape)}")

        device = next((p.device for group in self.param_groups for p in group["params"]), torch.device("cpu"))
        # a spec that reads no sensor has no use for the loss: it is neither averaged over ranks nor observed
        sensed_loss = loss if self.reads_sensors else None
        sync = self._sync
        if sync is not None:   # launches the loss average (and in zero2 averages the owned gradients)
            sync.begin(self, sensed_loss, device)
        global_state = self._global_state(device)
        global_state[G.G_STEP] += 1
        if sensed_loss is not None:
            G.observe_loss(global_state, sync.averaged_loss() if sync else torch.as_tensor(sensed_loss), self.spec)

        engine = R.Engine.of(self.spec)
        reference_groups = []   # gated groups on the reference path: their gate is computed in one go
        for group in self.param_groups:
            gated, plain = [], []
            for index, p in enumerate(group["params"]):
                if p.grad is None or (sync is not None and not sync.owns(p)):
                    continue
                if p.grad.is_sparse:
                    raise TypeError("FusedGate does not support sparse gradients")
                is_gated = self.is_gated(group, index, p)
                state = self.state[p]
                if not state:
                    state.update(R.new_matrix_state(p, engine) if is_gated else R.new_adamw_state(p))
                elif is_gated and engine.normuon and "normuon_sq" not in state:
                    state["normuon_sq"] = R.new_normuon_state(p)   # the spec switched NorMuon on
                elif not is_gated and "skipped" not in state:   # a state from before AdamW skips were counted
                    state["skipped"] = torch.zeros((), dtype=torch.float32, device=p.device)
                (gated if is_gated else plain).append((p, state))
            if gated and self._use_triton(gated[0][0]):
                self._triton_gated_group(group, gated, global_state, engine)
            elif gated:
                reference_groups.append((group, gated))
            if plain:
                self._adamw_group(group, plain)
        if reference_groups:
            self._reference_gated_groups(reference_groups, global_state, engine)
        if sync is not None:
            sync.finish(self)   # zero2: all-gather the owners' parameters
        return closure_loss

    def _hyper(self, group: dict) -> R.MatrixHyper:
        units = self._units(group)
        momentum = group["momentum"] if units == "muon" else group["betas"][0]
        return R.MatrixHyper(lr=float(group["lr"]), weight_decay=float(group["weight_decay"]),
                             momentum=float(momentum), eps=float(group["eps"]), nesterov=bool(group["nesterov"]),
                             ns_steps=int(group["ns_steps"]), units=units, normuon_beta2=float(group["beta2"]))

    def _uses(self) -> tuple[bool, bool, bool]:
        """(ortho, adam, clip): whether some pole gives the orthogonal / Adam direction weight, or clips."""
        a, c = self.spec.aggressive, self.spec.conservative
        return max(a.ortho, c.ortho) > 0, min(a.ortho, c.ortho) < 1, min(a.clip, c.clip) < math.inf

    @staticmethod
    def _modulation(group: dict) -> tuple[float, float, float]:
        """OptBrain's per-group (gate_scale, gate_clip, gate_dampen)."""
        return float(group["gate_scale"]), float(group["gate_clip"]), float(group["gate_dampen"])

    def _triton_gated_group(self, group: dict, items: list, global_state: torch.Tensor, engine: R.Engine) -> None:
        use_ortho, use_adam, use_clip = self._uses()
        self._triton_backend().gated_group(self, items, self._hyper(group), engine, global_state,
                                           self._modulation(group), use_ortho, use_clip, use_adam)

    def _reference_gated_groups(self, groups: list, global_state: torch.Tensor, engine: R.Engine) -> None:
        """The gated step of every reference-path group: the gate and the sensor EMAs for all their matrices
        at once (state packed into stacked tensors, see ``reference.pack``), the update for each run of
        same-shape matrices of a group at once."""
        states = [state for _, items in groups for _, state in items]
        device = groups[0][1][0][0].device
        sensors = R.pack(states, "sensors")
        measures = self.reads_sensors
        # applied-step counts before this step (the update advances the packed counts); read by the gate only
        steps = R.pack(states, "step").clone() if measures else None
        mods = [self._modulation(group) for group, items in groups for _ in items]
        if len(set(mods)) == 1:
            modulation = mods[0]
        else:
            scale, clip, dampen = zip(*mods)
            modulation = (torch.tensor(scale, dtype=torch.float64, device=device),
                          torch.tensor(clip, dtype=torch.float64, device=device),
                          torch.tensor(dampen, dtype=torch.float32, device=device))
        if not measures and isinstance(modulation[0], float):
            act = self._constant_actuators(sensors, modulation)
        else:
            act = self._actuators(sensors, steps, global_state, modulation, measures)
        use_ortho, use_adam, use_clip = self._uses()
        flags = R.StackFlags(ortho=use_ortho, clip=use_clip, adam=use_adam, host_checks=device.type == "cpu",
                             sensors=measures)
        ns_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        sums = torch.empty(len(states), len(G.SUMS), dtype=torch.float32, device=device)
        applied = torch.empty(len(states), dtype=torch.bool, device=device)
        offset = 0
        for group, items in groups:
            hp = self._hyper(group)
            for run in _same_shape_runs(items):
                at = slice(offset + run[0], offset + run[-1] + 1)
                if len(run) != run[-1] - run[0] + 1:
                    at = torch.tensor([offset + i for i in run], device=device)
                s, a = R.gated_matrix_stack([items[i][0] for i in run], [items[i][1] for i in run], hp, engine,
                                            {k: v if isinstance(v, float) else v[at] for k, v in act.items()},
                                            sensors[at], None if steps is None else steps[at], flags, ns_dtype)
                if measures:
                    sums[at] = s
                applied[at] = a
            offset += len(items)
        if measures:
            G.observe_param(sensors, steps, self.spec, sums, applied)
        if flags.host_checks and bool(applied.all()):
            R.pack(states, "step").add_(1.0)
        else:
            if not measures:
                sensors[:, G.S_SKIPPED] += (~applied).float()
            R.pack(states, "step").add_(applied.float())

    @property
    def reads_sensors(self) -> bool:
        """Whether anything reads the sensors: a live gate (poles differ), a trust ratio (τ > 0) or a clip
        (k < ∞). Otherwise — nanochat, muon, adamw — the reference path skips their reductions, the gate
        stays unevaluated (recorded as 0), the loss is not observed, and ``gate_state`` reports the actuators
        with the sensors as they were."""
        pole = self.spec.aggressive
        return not self.spec.is_inert or pole.trust_mix > 0 or pole.clip < math.inf

    def _actuators(self, sensors: torch.Tensor, steps: torch.Tensor, global_state: torch.Tensor,
                   modulation, measures: bool = True) -> dict[str, torch.Tensor]:
        """This step's gate and actuators for parameters with sensors ``[P, N_SLOTS]``; recorded in them.
        ``modulation`` is (scale, clip, dampen), floats or per-parameter tensors. Without ``measures`` the
        poles are equal and the gate cannot move the actuators: g is not evaluated."""
        scale, clip, dampen = modulation
        if measures:
            normalised = G.normalised_sensors(global_state, sensors, steps, self.total_steps)
            g = G.gate_value(self.spec, normalised, dampen)
        else:
            g = torch.zeros_like(steps)
        act = G.actuators(self.spec, g, scale, clip)
        sensors[:, G.S_GATE] = g
        for name, slot in G.ACTUATOR_SLOTS.items():
            sensors[:, slot] = act[name].float()
        return act

    def _constant_actuators(self, sensors: torch.Tensor, modulation) -> dict[str, float]:
        """The actuators of an unmeasured spec (its poles are equal) with one modulation, as Python floats
        (``G.actuators`` with any g); recorded in the sensors."""
        scale, clip, _ = modulation
        act = {name: cons for name, (cons, _) in G.pole_values(self.spec).items()}
        act["update_mult"] *= scale
        act["clip_inv"] /= clip
        slots = list(G.ACTUATOR_SLOTS.values())
        sensors[:, slots] = torch.tensor([act[name] for name in G.ACTUATOR_SLOTS], dtype=torch.float32,
                                         device=sensors.device)
        return act

    def _adamw_group(self, group: dict, items: list) -> None:
        lr, betas, eps, wd = float(group["lr"]), group["betas"], float(group["eps"]), float(group["weight_decay"])
        if items and self._use_triton(items[0][0]):
            self._triton_backend().adamw_group(self, items, lr, betas, eps, wd)
            return
        host_checks = items[0][0].device.type == "cpu"
        for p, state in items:
            R.adamw_step(p, p.grad, state, lr, betas, eps, wd, host_checks)

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

    def skipped_steps(self) -> dict[str, int]:
        """Per parameter with state, the steps skipped because its gradient was not finite (synchronises)."""
        out = {}
        for gi, group in enumerate(self.param_groups):
            for index, p in enumerate(group["params"]):
                state = self.state.get(p)
                if state:
                    count = state["sensors"][G.S_SKIPPED] if "sensors" in state else state.get("skipped", 0.0)
                    out[self._param_name(gi, group, index)] = int(count)
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        sd = super().state_dict()
        global_state = self._global if self._global is not None else G.new_global_state("cpu")
        sd["fusedgate"] = {"format": STATE_FORMAT, "spec": self.spec.to_dict(), "total_steps": self.total_steps,
                           "global": global_state.clone()}
        return self._sync.gather_state(self, sd) if self._sync is not None else sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a FusedGate state_dict. Everything is validated (``_check_state_dict``) before anything changes;
        state tensors keep their saved dtypes (fp32 moments for bf16 params, float64 decay products). A ``step``
        saved as a Python number (torch's older format) is read as a tensor."""
        spec, id_to_param = self._check_state_dict(state_dict)
        extra = state_dict["fusedgate"]
        # Validated: let torch load the groups (hyperparameters) with no state, then place the state ourselves.
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        for pid, pstate in state_dict.get("state", {}).items():
            p = id_to_param[pid]
            self.state[p] = {k: torch.as_tensor(v).detach().to(device=p.device, copy=True)
                             for k, v in pstate.items()}
            self.state[p]["step"] = self.state[p]["step"].to(torch.float32)
            for key in ("m_decay_prod", "v_decay_prod"):
                self.state[p][key] = self.state[p][key].to(torch.float64)
        self.spec = spec
        self.total_steps = extra["total_steps"]
        device = next((p.device for group in self.param_groups for p in group["params"]), torch.device("cpu"))
        self._global = extra["global"].detach().to(device=device, dtype=torch.float32, copy=True)
        if self._sync is not None:
            self._sync.drop_unowned(self)   # zero2: keep the state this rank owns

    def _check_state_dict(self, state_dict: dict) -> tuple[GateSpec, dict]:
        """Every check of ``load_state_dict``, raising ValueError with the offending entry; returns the spec and
        the map from saved parameter ids to this optimizer's parameters."""
        if not isinstance(state_dict, dict):
            raise ValueError(f"a state_dict is a dict, got {type(state_dict).__name__}")
        extra = state_dict.get("fusedgate")
        if not isinstance(extra, dict) or extra.get("format") != STATE_FORMAT:
            raise ValueError("not a FusedGate state_dict (missing or unknown 'fusedgate' section)")
        try:
            spec = GateSpec.from_dict(extra.get("spec"))
        except SpecError as exc:
            raise ValueError(f"state_dict spec: {exc}") from None
        total = extra.get("total_steps")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
            raise ValueError(f"state_dict total_steps={total!r}: expected a positive int or None")
        glob = extra.get("global")
        if not torch.is_tensor(glob) or glob.shape != (G.N_GLOBAL,) or not glob.is_floating_point():
            raise ValueError(f"state_dict global state must be a float tensor of shape ({G.N_GLOBAL},), got "
                             f"{getattr(glob, 'shape', type(glob).__name__)}")
        saved_groups = state_dict.get("param_groups")
        if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups) if isinstance(saved_groups, list) else 'no'} param "
                             f"groups, this optimizer has {len(self.param_groups)}")
        id_to_param, id_to_role = {}, {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
                raise ValueError(f"param group {gi} of the state_dict has no 'params' list")
            missing = [key for key in ("lr", "betas", "eps", "weight_decay") if key not in saved]
            if missing:
                raise ValueError(f"param group {gi} of the state_dict lacks {', '.join(missing)}")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param group {gi} has {len(saved['params'])} params in the state_dict, "
                                 f"{len(group['params'])} here")
            for index, (pid, p) in enumerate(zip(saved["params"], group["params"])):
                id_to_param[pid] = p
                id_to_role[pid] = self.is_gated(group, index, p)
        for pid, pstate in state_dict.get("state", {}).items():
            if pid not in id_to_param:
                raise ValueError(f"state_dict holds state for an unknown parameter id {pid}")
            _check_param_state(pid, pstate, id_to_param[pid], id_to_role[pid])
        return spec, id_to_param

    # ------------------------------------------------------------------ copying
    def __getstate__(self) -> dict:
        """torch's Optimizer pickles defaults, state and param groups only; FusedGate's own attributes go too,
        so that ``copy.deepcopy`` and pickling give an optimizer that can step."""
        return {**super().__getstate__(), **{key: self.__dict__[key] for key in _OWN_ATTRIBUTES}}


_OWN_ATTRIBUTES = ("spec", "total_steps", "backend", "adamw_names", "_global", "_sync")
_SCALAR_KEYS = ("step", "m_decay_prod", "v_decay_prod")   # 0-d entries of every parameter's state


def _check_param_state(pid, pstate, p: torch.Tensor, gated: bool) -> None:
    """One parameter's saved state: the keys of its role, each of the right shape (ValueError otherwise)."""
    if not isinstance(pstate, dict):
        raise ValueError(f"parameter {pid}: saved state is a {type(pstate).__name__}, not a dict")
    if ("sensors" in pstate) != gated:
        raise ValueError(f"parameter {pid}: saved as {'gated' if 'sensors' in pstate else 'AdamW'}, "
                         f"here it is {'gated' if gated else 'AdamW'}")
    expected = {**dict.fromkeys(_SCALAR_KEYS, ()), "exp_avg": tuple(p.shape), "exp_avg_sq": tuple(p.shape)}
    if gated:
        expected["sensors"] = (G.N_SLOTS,)
        if "normuon_sq" in pstate:
            expected["normuon_sq"] = R.normuon_shape(*R.matrix_view_shape(p.shape))
    else:
        expected["skipped"] = ()
    for key, shape in expected.items():
        value = pstate.get(key)
        if key == "skipped" and value is None:
            continue   # written before AdamW skips were counted
        if key == "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            continue   # torch's older format: a Python number
        if not torch.is_tensor(value) or not value.is_floating_point() or tuple(value.shape) != shape:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"parameter {pid}: saved state[{key!r}] must be a float tensor of shape {shape}, "
                             f"got {got}")
    unknown = sorted(set(pstate) - set(expected))
    if unknown:
        raise ValueError(f"parameter {pid}: saved state has unknown entries {', '.join(map(repr, unknown))}")


def _same_shape_runs(items: list) -> list[list[int]]:
    """Indices of ``items`` grouped by parameter shape (first-seen order; consecutive when the group's
    params of one shape are)."""
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

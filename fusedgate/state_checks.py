"""Validation of a FusedGate ``state_dict`` before ``load_state_dict`` changes anything: one function per
entry kind, each raising ValueError with the offending entry.

    check_header        the ``fusedgate`` section: format, spec, total_steps, global state
    check_groups        ``param_groups``: as many as here, each with its hyperparameters and as many params
    check_param_state   one parameter's state: the keys of its role (gated or AdamW), each a float tensor of
                        the right shape; a gated matrix's ``exp_avg_sq`` is optional (it exists only while
                        some pole gives ω < 1), a ``skipped`` count too (older checkpoints)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.spec import GateSpec, SpecError

STATE_FORMAT = 1
SCALAR_KEYS = ("step", "m_decay_prod", "v_decay_prod")   # 0-d entries of every parameter's state
OPTIONAL_KEYS = ("skipped", "exp_avg_sq")   # may be absent: see the module docstring


def check_header(state_dict) -> GateSpec:
    """The ``fusedgate`` section; returns its spec."""
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
    return spec


def check_groups(saved_groups, param_groups: list[dict],
                 is_gated: Callable[[dict, int, torch.Tensor], bool]) -> tuple[dict, dict]:
    """``param_groups`` of the state_dict against this optimizer's; returns the maps from saved parameter ids
    to (this optimizer's parameter, whether it is gated)."""
    if not isinstance(saved_groups, list) or len(saved_groups) != len(param_groups):
        raise ValueError(f"state_dict has {len(saved_groups) if isinstance(saved_groups, list) else 'no'} param "
                         f"groups, this optimizer has {len(param_groups)}")
    id_to_param, id_to_role = {}, {}
    for gi, (saved, group) in enumerate(zip(saved_groups, param_groups)):
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
            id_to_role[pid] = is_gated(group, index, p)
    return id_to_param, id_to_role


def check_param_state(pid, pstate, p: torch.Tensor, gated: bool) -> None:
    """One parameter's saved state: the keys of its role, each of the right shape (ValueError otherwise)."""
    if not isinstance(pstate, dict):
        raise ValueError(f"parameter {pid}: saved state is a {type(pstate).__name__}, not a dict")
    if ("sensors" in pstate) != gated:
        raise ValueError(f"parameter {pid}: saved as {'gated' if 'sensors' in pstate else 'AdamW'}, "
                         f"here it is {'gated' if gated else 'AdamW'}")
    expected = {**dict.fromkeys(SCALAR_KEYS, ()), "exp_avg": tuple(p.shape), "exp_avg_sq": tuple(p.shape)}
    if gated:
        expected["sensors"] = (G.N_SLOTS,)
        if "normuon_sq" in pstate:
            expected["normuon_sq"] = R.normuon_shape(*R.matrix_view_shape(p.shape))
    else:
        expected["skipped"] = ()
    for key, shape in expected.items():
        value = pstate.get(key)
        if value is None and (key == "skipped" or (key == "exp_avg_sq" and gated)):
            continue   # see OPTIONAL_KEYS
        if key == "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            continue   # torch's older format: a Python number
        if not torch.is_tensor(value) or not value.is_floating_point() or tuple(value.shape) != shape:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"parameter {pid}: saved state[{key!r}] must be a float tensor of shape {shape}, "
                             f"got {got}")
    unknown = sorted(set(pstate) - set(expected))
    if unknown:
        raise ValueError(f"parameter {pid}: saved state has unknown entries {', '.join(map(repr, unknown))}")


def check_state_dict(state_dict, param_groups: list[dict],
                     is_gated: Callable[[dict, int, torch.Tensor], bool]) -> tuple[GateSpec, dict]:
    """Every check of ``load_state_dict``; returns the spec and the map from saved ids to parameters."""
    spec = check_header(state_dict)
    id_to_param, id_to_role = check_groups(state_dict.get("param_groups"), param_groups, is_gated)
    for pid, pstate in state_dict.get("state", {}).items():
        if pid not in id_to_param:
            raise ValueError(f"state_dict holds state for an unknown parameter id {pid}")
        check_param_state(pid, pstate, id_to_param[pid], id_to_role[pid])
    return spec, id_to_param

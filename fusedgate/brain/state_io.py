"""Save and load an OptBrain as plain arrays: ``.npz`` without pickle, or tensors inside a state dict.

The snapshot holds everything a restarted run needs to continue exactly: the policy, the normalisers,
the reward statistics, the random generator's state, the position inside the current window and cycle,
the sensors' running state and — only while a group's dampen knob is on — its smoothing buffers.
Loading validates every array against the brain it is loaded into *before* changing anything, so a
corrupt or mismatched file raises one ``BrainError`` line and leaves the brain as it was.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from fusedgate.brain.config import FIELDS, BrainConfig, BrainError
from fusedgate.brain.policy import RunningNorm
from fusedgate.files import WriteError, write_atomic

FORMAT_VERSION = 3
STRUCTURE = ("n_groups", "window", "sketch_size", "seed")
HYPER = tuple(f for f in FIELDS if f not in STRUCTURE)
CORE_ARRAYS = ("W", "b", "sigma", "cycle_order", "cycle_r", "eps", "mu", "obs", "z", "decisions")
CORE_SCALARS = ("e_sq", "n_windows", "n_cycles", "n_bad_windows", "n_skipped", "noise_sq", "prev_mean", "first_mean",
                "slow_mean", "prev_level", "cycle_pos")
MASK64 = (1 << 64) - 1
MODES = ("numpy", "torch", "fusedgate")  # stored as an index: state dicts hold only numeric tensors


def _rng_to_array(rng: np.random.Generator) -> np.ndarray:
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise BrainError(f"cannot save a {st['bit_generator']} generator")
    s, inc = st["state"]["state"], st["state"]["inc"]
    return np.array([s >> 64, s & MASK64, inc >> 64, inc & MASK64, st["has_uint32"], st["uinteger"]],
                    dtype=np.uint64)


def _rng_from_array(a: np.ndarray) -> np.random.Generator:
    w = [int(x) for x in a]
    bg = np.random.PCG64()
    bg.state = {"bit_generator": "PCG64", "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
                "has_uint32": w[4], "uinteger": w[5]}
    return np.random.Generator(bg)


def snapshot_arrays(brain) -> dict[str, np.ndarray]:
    """Every piece of the brain's state as a named numpy array (copies)."""
    core = brain.core
    out: dict[str, np.ndarray] = {"format_version": np.array(FORMAT_VERSION), "mode": np.array(MODES.index(brain.mode))}
    for name in STRUCTURE:
        out[name] = np.array(getattr(brain, name))
    for name in HYPER:
        out[f"config.{name}"] = np.array(getattr(core.config, name))
    for name, value in core.gate.state().items():
        out[f"gate.{name}"] = np.array(value)
    for name in CORE_ARRAYS:
        out[f"core.{name}"] = np.array(getattr(core, name))
    for name in CORE_SCALARS:
        out[f"core.{name}"] = np.array(getattr(core, name))
    for norm_name in ("loss_norm", "group_norm"):
        norm = getattr(core, norm_name)
        for part in ("mean", "var", "count"):
            out[f"core.{norm_name}.{part}"] = np.array(getattr(norm, part))
    out["core.rng"] = _rng_to_array(core.rng)
    out["step_count"] = np.array(brain.step_count)
    out["frozen"] = np.array(brain.frozen)
    for name, value in brain.sensors.state_arrays().items():
        out[f"sens.{name}"] = value
    if brain.mode == "numpy":
        out["losses"] = brain._losses.copy()
        out["have_loss"] = np.array(brain._have_loss)
    else:
        out["dampen_valid"] = brain._dampen_valid.copy()
        for g, buf in brain._dampen_buf.items():
            if brain._dampen_valid[g]:
                for i, t in enumerate(buf):
                    t = t.detach().cpu()
                    out[f"dampen_buf.{g}.{i}"] = (t if t.dtype in _NUMPY_SAFE() else t.float()).numpy().copy()
    return out


def _NUMPY_SAFE():
    import torch

    return (torch.float64, torch.float32)


def _check(arrays: dict[str, np.ndarray], template: dict[str, np.ndarray], source: str, brain) -> None:
    version = arrays.get("format_version")
    if version is None or version.shape != () or int(version) != FORMAT_VERSION:
        raise BrainError(f"{source}: not an OptBrain file of format version {FORMAT_VERSION}")
    mode = arrays.get("mode")
    if mode is None or mode.shape != () or mode.dtype.kind not in "iu" or not 0 <= int(mode) < len(MODES):
        raise BrainError(f"{source}: missing or unknown brain mode")
    if MODES[int(mode)] != brain.mode:
        raise BrainError(f"{source}: saved from a {MODES[int(mode)]} brain, this one is {brain.mode}")
    for name in STRUCTURE:
        if name not in arrays or arrays[name].shape != () or int(arrays[name]) != int(getattr(brain, name)):
            raise BrainError(f"{source}: {name}={arrays.get(name)} does not match this brain's "
                             f"{name}={getattr(brain, name)}")
    for key, want in template.items():
        if key.startswith("dampen_buf."):
            continue
        got = arrays.get(key)
        if got is None:
            raise BrainError(f"{source}: missing array {key!r}")
        if got.shape != want.shape or got.dtype.kind != want.dtype.kind:
            raise BrainError(f"{source}: array {key!r} has shape {got.shape} {got.dtype}, expected "
                             f"{want.shape} {want.dtype}")
    for key in ("core.W", "core.b", "gate.alpha", "core.sigma"):
        if not np.all(np.isfinite(arrays[key])):
            raise BrainError(f"{source}: array {key!r} is not finite")
    if brain.mode != "numpy":
        if not np.array_equal(arrays["sens.numel"], template["sens.numel"]):
            raise BrainError(f"{source}: group sizes {arrays['sens.numel'].tolist()} do not match this "
                             f"optimizer's {template['sens.numel'].tolist()}")
        for g in np.nonzero(arrays["dampen_valid"])[0]:
            for i, p in enumerate(brain.sensors.params_of_group[g]):
                buf = arrays.get(f"dampen_buf.{g}.{i}")
                if buf is None or buf.shape != tuple(p.shape):
                    raise BrainError(f"{source}: dampen buffer {g}.{i} is missing or has the wrong shape")


def restore_arrays(brain, arrays: dict[str, np.ndarray], source: str) -> None:
    """Validate ``arrays`` against ``brain``, then load them into it."""
    _check(arrays, snapshot_arrays(brain), source, brain)
    core = brain.core
    values = {name: arrays[f"config.{name}"] for name in HYPER}
    values = {name: (tuple(float(x) for x in v) if v.ndim else v.item()) for name, v in values.items()}
    core.config = brain.config = BrainConfig.from_kwargs(core.config, **values)
    core.gate.load({name: arrays[f"gate.{name}"] for name in core.gate.ARRAYS})
    for name in CORE_SCALARS:
        setattr(core, name, type(getattr(core, name))(arrays[f"core.{name}"]))
    for name in CORE_ARRAYS:
        setattr(core, name, np.array(arrays[f"core.{name}"]))
    for norm_name in ("loss_norm", "group_norm"):
        norm: RunningNorm = getattr(core, norm_name)
        for part in ("mean", "var", "count"):
            setattr(norm, part, np.array(arrays[f"core.{norm_name}.{part}"]))
    core.rng = _rng_from_array(arrays["core.rng"])
    brain.step_count = int(arrays["step_count"])
    brain.frozen = bool(arrays["frozen"])
    brain.sensors.load_arrays({k[5:]: v for k, v in arrays.items() if k.startswith("sens.")})
    if brain.mode == "numpy":
        brain._losses = np.array(arrays["losses"], dtype=np.float64)
        brain._have_loss = bool(arrays["have_loss"])
        return
    import torch

    brain._write_gate_keys()
    brain._dampen_valid = np.array(arrays["dampen_valid"], dtype=bool)
    brain._dampen_buf = {}
    for g in np.nonzero(brain._dampen_valid)[0]:
        params = brain.sensors.params_of_group[g]
        brain._dampen_buf[int(g)] = [torch.from_numpy(np.array(arrays[f"dampen_buf.{g}.{i}"])).to(
            device=p.device, dtype=p.dtype) for i, p in enumerate(params)]
    brain._make_plan()


def write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (``fusedgate.files.write_atomic``: an old file survives errors)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BrainError(f"cannot save brain to {path}: folder {folder} does not exist")
    try:
        write_atomic(path, lambda f: np.savez(f, **arrays))
    except WriteError as exc:
        raise BrainError(f"cannot save brain to {path}: {exc}") from None


def read_npz(path) -> dict[str, np.ndarray]:
    """Read every array of an .npz with pickle disabled; any failure -> one-line BrainError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BrainError(f"brain file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.array(data[k]) for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise BrainError(f"{path}: not a readable OptBrain .npz file ({type(exc).__name__}: {exc})") from None

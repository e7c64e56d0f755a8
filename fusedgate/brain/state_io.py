"""Save and load an OptBrain as plain arrays: ``.npz`` without pickle, or tensors inside a state dict.

The snapshot holds everything a restarted run needs to continue exactly: the policy, the normalisers,
the reward statistics, the random generator's state, the position inside the current window and cycle,
the features' running state and — only while a group's dampen knob is on — its smoothing buffers.
Loading validates every array against the brain it is loaded into *before* changing anything, so a
corrupt or mismatched file raises one ``BrainError`` line and leaves the brain as it was.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile

import numpy as np

from fusedgate.brain.config import BOUNDS, FIELDS, BrainConfig, BrainError, check_field
from fusedgate.brain.ladder import STATUS as LADDER_STATUS
from fusedgate.brain.ladder import LadderTest
from fusedgate.brain.policy import CLIP_RANGE, DAMPEN_RANGE, KNOBS, ROLES, SCALE_RANGE, RunningNorm
from fusedgate.brain.safety import TrustGate
from fusedgate.brain.warmdown import STATUS, WarmdownTest
from fusedgate.files import WriteError, write_atomic

FORMAT_VERSION = 10
STRUCTURE = ("n_groups", "window", "sketch_size", "seed")
HYPER = tuple(f for f in FIELDS if f not in STRUCTURE)
CORE_ARRAYS = ("W", "b", "sigma", "cycle_order", "cycle_r", "eps", "mu", "obs", "z", "decisions")
CORE_SCALARS = ("e_sq", "n_windows", "n_cycles", "n_bad_windows", "n_skipped", "noise_sq", "prev_mean", "first_mean",
                "slow_mean", "prev_level", "cycle_pos", "guard")
MASK64 = (1 << 64) - 1
MAX_COUNT = 10 ** 15       # steps, windows, pairs: far beyond any run
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
    for name, value in core.warmdown.state().items():
        out[f"warmdown.{name}"] = np.array(value)
    for name, value in core.ladder.state().items():
        out[f"ladder.{name}"] = np.array(value)
    for name in CORE_ARRAYS + CORE_SCALARS:
        out[f"core.{name}"] = np.array(getattr(core, name))
    for norm_name in ("loss_norm", "group_norm"):
        norm = getattr(core, norm_name)
        for part in ("mean", "var", "count"):
            out[f"core.{norm_name}.{part}"] = np.array(getattr(norm, part))
    out["core.rng"] = _rng_to_array(core.rng)
    out["step_count"] = np.array(brain.step_count)
    out["frozen"] = np.array(brain.frozen)
    for name, value in brain.features.state_arrays().items():
        out[f"feat.{name}"] = value
    out.update(brain.mode_arrays())
    return out


def _check_header(arrays: dict[str, np.ndarray], source: str, brain) -> None:
    version = arrays.get("format_version")
    if version is None or version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
        found = "none" if version is None or version.shape != () else version.item()
        raise BrainError(f"{source}: not an OptBrain file of format version {FORMAT_VERSION} (found {found}); "
                         "save it again with this version")
    mode = arrays.get("mode")
    if mode is None or mode.shape != () or mode.dtype.kind not in "iu" or not 0 <= int(mode) < len(MODES):
        raise BrainError(f"{source}: missing or unknown brain mode")
    if MODES[int(mode)] != brain.mode:
        raise BrainError(f"{source}: saved from a {MODES[int(mode)]} brain, this one is {brain.mode}")
    for name in STRUCTURE:
        if name not in arrays or arrays[name].shape != () or int(arrays[name]) != int(getattr(brain, name)):
            raise BrainError(f"{source}: {name}={arrays.get(name)} does not match this brain's "
                             f"{name}={getattr(brain, name)}")


def _check_shapes(arrays: dict[str, np.ndarray], template: dict[str, np.ndarray], source: str) -> None:
    for key, want in template.items():
        if key.startswith("dampen_buf."):
            continue
        got = arrays.get(key)
        if got is None:
            raise BrainError(f"{source}: missing array {key!r}")
        if got.shape != want.shape or got.dtype.kind != want.dtype.kind:
            raise BrainError(f"{source}: array {key!r} has shape {got.shape} {got.dtype}, expected "
                             f"{want.shape} {want.dtype}")


def _bound(source: str, key: str, value, lo, hi, integer: bool = False) -> None:
    value = np.asarray(value).item()
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi) or (integer and v != int(v)):
        kind = "an integer" if integer else "a finite value"
        raise BrainError(f"{source}: {key}={value!r} is out of range: expected {kind} in [{lo:g}, {hi:g}]")


def _check_ranges(arrays: dict[str, np.ndarray], source: str, brain) -> None:
    """Every loaded number against the range the constructor and the learner keep it in."""
    for name in HYPER:
        value = arrays[f"config.{name}"]
        if name in BOUNDS:
            try:
                check_field(name, value.item())
            except BrainError as exc:
                raise BrainError(f"{source}: config.{exc}") from None
    for key in ("core.W", "core.b", "core.sigma", "core.mu", "core.eps", "core.obs", "core.z", "core.cycle_r",
                "core.loss_norm.mean", "core.group_norm.mean"):
        if not np.all(np.isfinite(arrays[key])):
            raise BrainError(f"{source}: array {key!r} is not finite")
    for key in ("core.e_sq", "gate.d_sq", "core.loss_norm.var", "core.group_norm.var", "core.loss_norm.count",
                "core.group_norm.count"):
        _bound(source, key, np.min(arrays[key]), 0.0, 1e300)
    decisions = arrays["core.decisions"]
    for i, (lo, hi) in enumerate((SCALE_RANGE, CLIP_RANGE, DAMPEN_RANGE)):
        if decisions.size and not (np.all(decisions[:, i] >= lo) and np.all(decisions[:, i] <= hi)):
            raise BrainError(f"{source}: core.decisions: {KNOBS[i]} outside [{lo:g}, {hi:g}]")
    alpha = float(arrays["gate.alpha"])
    if not (alpha == 0.0 or brain.core.config.alpha_min <= alpha <= 1.0) or not math.isfinite(alpha):
        raise BrainError(f"{source}: gate.alpha={alpha!r} is out of range: expected 0 or a value in "
                         f"[alpha_min={brain.core.config.alpha_min:g}, 1]")
    _bound(source, "core.cycle_pos", arrays["core.cycle_pos"], 0, len(ROLES), integer=True)
    _check_warmdown(arrays, source)
    _check_ladder(arrays, source)
    if not float(arrays["core.guard"]) > 0.0:
        raise BrainError(f"{source}: core.guard={float(arrays['core.guard'])!r}: expected a loss level > 0 or inf")
    if not set(arrays["core.cycle_order"].tolist()) <= set(ROLES) | {0}:
        raise BrainError(f"{source}: core.cycle_order={arrays['core.cycle_order'].tolist()}: expected roles "
                         f"from {list(ROLES)}")
    for key in ("step_count", "core.n_windows", "core.n_cycles", "core.n_bad_windows", "core.n_skipped",
                "gate.level_n", "gate.n_pairs", "gate.n_grows", "gate.n_shrinks"):
        _bound(source, key, arrays[key], 0, MAX_COUNT, integer=True)
    if int(arrays["core.n_windows"]) * brain.window > int(arrays["step_count"]) + brain.window:
        raise BrainError(f"{source}: core.n_windows={int(arrays['core.n_windows'])} windows of {brain.window} "
                         f"steps do not fit in step_count={int(arrays['step_count'])}")
    rng = arrays["core.rng"]
    if rng.shape != (6,) or int(rng[3]) % 2 == 0 or int(rng[4]) not in (0, 1):
        raise BrainError(f"{source}: core.rng is not a PCG64 generator state (its increment must be odd; "
                         f"a zeroed state is refused)")


def _check_warmdown(arrays: dict[str, np.ndarray], source: str) -> None:
    """The warmdown test's state (``fusedgate.brain.warmdown``) against the ranges it keeps."""
    _bound(source, "warmdown.status", arrays["warmdown.status"], 0, len(STATUS) - 1, integer=True)
    _bound(source, "warmdown.pos", arrays["warmdown.pos"], 0, 2, integer=True)
    for key in ("warmdown.first", "warmdown.pairs"):
        _bound(source, key, arrays[key], 0, MAX_COUNT, integer=True)
    _bound(source, "warmdown.commit", arrays["warmdown.commit"], -1, MAX_COUNT, integer=True)
    _bound(source, "warmdown.sum_d", arrays["warmdown.sum_d"], -1e300, 1e300)
    if not np.all(np.isfinite(arrays["warmdown.rewards"])):
        raise BrainError(f"{source}: array 'warmdown.rewards' is not finite")
    if sorted(arrays["warmdown.order"].tolist()) != [0, 1] and np.any(arrays["warmdown.order"]):
        raise BrainError(f"{source}: warmdown.order={arrays['warmdown.order'].tolist()}: expected the roles 0 and 1")


def _check_ladder(arrays: dict[str, np.ndarray], source: str) -> None:
    """The lr ladder's state (``fusedgate.brain.ladder``) against the ranges it keeps: ℓ = u^rungs."""
    _bound(source, "ladder.status", arrays["ladder.status"], 0, len(LADDER_STATUS) - 1, integer=True)
    _bound(source, "ladder.pos", arrays["ladder.pos"], 0, 2, integer=True)
    _bound(source, "ladder.pairs", arrays["ladder.pairs"], 0, MAX_COUNT, integer=True)
    _bound(source, "ladder.rungs", arrays["ladder.rungs"], 0, int(arrays["config.ladder"]), integer=True)
    rungs, step = int(arrays["ladder.rungs"]), float(arrays["config.ladder_step"])
    if not math.isclose(float(arrays["ladder.level"]), step ** rungs, rel_tol=1e-9):
        raise BrainError(f"{source}: ladder.level={float(arrays['ladder.level'])!r} is not "
                         f"ladder_step ** rungs = {step ** rungs:g}")
    _bound(source, "ladder.sum_d", arrays["ladder.sum_d"], -1e300, 1e300)
    _bound(source, "ladder.align_n", arrays["ladder.align_n"], 0, MAX_COUNT, integer=True)
    _bound(source, "ladder.align_sum", arrays["ladder.align_sum"], -int(arrays["ladder.align_n"]),
           int(arrays["ladder.align_n"]))
    if not np.all(np.isfinite(arrays["ladder.rewards"])):
        raise BrainError(f"{source}: array 'ladder.rewards' is not finite")
    if sorted(arrays["ladder.order"].tolist()) != [0, 1] and np.any(arrays["ladder.order"]):
        raise BrainError(f"{source}: ladder.order={arrays['ladder.order'].tolist()}: expected the roles 0 and 1")


def _check(arrays: dict[str, np.ndarray], template: dict[str, np.ndarray], source: str, brain) -> None:
    _check_header(arrays, source, brain)
    _check_shapes(arrays, template, source)
    _check_ranges(arrays, source, brain)
    brain.check_mode_arrays(arrays, source)


def restore_arrays(brain, arrays: dict[str, np.ndarray], source: str) -> None:
    """Validate ``arrays`` against ``brain``, then load them into it."""
    _check(arrays, snapshot_arrays(brain), source, brain)
    core = brain.core
    values = {name: arrays[f"config.{name}"] for name in HYPER}
    values = {name: (tuple(float(x) for x in v) if v.ndim else v.item()) for name, v in values.items()}
    core.config = brain.config = BrainConfig.from_kwargs(core.config, **values)
    core.sigma = np.asarray(core.config.sigma, dtype=np.float64) * core.config.explore
    core.gate = TrustGate.of(core.config)
    core.gate.load({name: arrays[f"gate.{name}"] for name in core.gate.ARRAYS})
    core.warmdown = WarmdownTest.of(core.config)
    core.warmdown.load({name: arrays[f"warmdown.{name}"] for name in core.warmdown.ARRAYS})
    core.ladder = LadderTest.of(core.config)
    core.ladder.load({name: arrays[f"ladder.{name}"] for name in core.ladder.ARRAYS})
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
    brain.features.load_arrays({k[5:]: v for k, v in arrays.items() if k.startswith("feat.")})
    brain.restore_mode_arrays(arrays)


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


def _not_a_file(path: str) -> str:
    """What a path that is not a regular file is, from ``stat`` (nothing is opened)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc})"
    kinds = ((stat.S_ISDIR, "is a directory"), (stat.S_ISCHR, "is a character device"),
             (stat.S_ISBLK, "is a block device"), (stat.S_ISFIFO, "is a FIFO (named pipe)"),
             (stat.S_ISSOCK, "is a socket"))
    return next((text for test, text in kinds if test(mode)), "is of an unknown kind")


def read_npz(path) -> dict[str, np.ndarray]:
    """Read every array of an .npz with pickle disabled; any failure -> one-line BrainError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = _not_a_file(path)
        raise BrainError(f"brain file {path} {what}" + ("" if what == "does not exist" else
                                                          "; expected a regular .npz file"))
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.array(data[k]) for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise BrainError(f"{path}: not a readable OptBrain .npz file ({type(exc).__name__}: {exc})") from None

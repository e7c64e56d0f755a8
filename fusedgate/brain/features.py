"""The OptBrain's per-group features: the seven numbers it observes of each parameter group.

(Called *features* here and in OptBrain's API; FusedGate's own per-matrix state is its *sensors*.)

The features are measured on one step per window of K steps, the window's last (t = K−1, 2K−1, …),
so that the brain costs almost nothing on the other steps. For group g at such a step t, with ‖·‖ the
L2 norm over all of the group's elements, ŝ_t a fixed random *sketch* of S coordinates of the group
(sampled with replacement, seeded; the same coordinates every step, so sketch statistics are unbiased
estimates of the full ones at O(S) cost) and m̂ the bias-corrected EMA (β = 0.9) of ‖g‖ over the
steps on which it was measured before (the sensed steps, plus every step while the group's clip knob is on):

    log_grad_norm     log ‖g_t‖
    grad_spike        log ‖g_t‖ − log m̂                             (0 before any measurement)
    alignment         cos(ŝ(g_t), ŝ(g_{t−K}))  — one window apart   (0 in the first window)
    oscillation       fraction of sketch coordinates whose gradient sign flipped since t−K
    log_update_ratio  log ‖ŝ(p_t) − ŝ(p_{t−K})‖ − log ‖ŝ(p_{t−K})‖   (the net update of the last window)
    overshoot         cos(ŝ(g_t), ŝ(p_t) − ŝ(p_{t−K}))  — > 0: the window's update overshot
    log_param_norm    log ‖p_t‖

Logs are of max(x, 1e-30); a feature without history is 0. ``sketch_features`` is the table's one
implementation (float64, on the host). ``TorchFeatures`` measures its inputs (the norms, m̂ and the
sketches) on the parameters' device and reads them back once per window; ``NumpyFeatures`` measures
them in numpy for numpy mode, from the flat arrays the caller hands in, and is the reference the tests
compare the torch path's measurements against.
"""

from __future__ import annotations

import math

import numpy as np

from fusedgate.brain.config import BrainError
from fusedgate.brain.policy import N_GROUP_FEATURES

NORM_BETA = 0.9
TINY = 1e-30


def clip_ratio(clip: float) -> float:
    """The clip knob c as a multiple of the running grad norm: c/(1−c) for c < 1, +inf (off) for c ≥ 1.

    Continuous in c and exactly "no clipping" at the neutral c = 1: c = 0.5 clips the group's grad norm
    to its running mean, c = 0.1 to 1/9 of it, c = 0.9 to 9× it.
    """
    return clip / (1.0 - clip) if clip < 1.0 else float("inf")


def sketch_indices(numel: int, size: int, seed: int, group: int) -> np.ndarray:
    """S flat coordinates of a group with ``numel`` elements, sampled with replacement, sorted."""
    rng = np.random.Generator(np.random.PCG64([seed, 7919, group]))
    return np.sort(rng.integers(0, numel, size=size))


def _log(x: float) -> float:
    return math.log(max(x, TINY))          # (NaN stays NaN)


def _ratio(num: float, denom: float) -> float:
    return num / denom if denom > 0 else 0.0


def sketch_features(gnorm, m_prev, gs, prev_gs=None, ps=None, prev_ps=None, pnorm=None) -> np.ndarray:
    """The (G, 7) features of G groups at a sensed step, in float64 from what was measured there: ‖g‖
    (``gnorm``, G), m̂ before this step (``m_prev``, NaN for a group without one), the gradient's sketch
    (``gs``, G × S) and the one a window before (``prev_gs``, None in the first window), the parameters'
    sketches now and a window before (``ps``, ``prev_ps``) and ‖p‖ (``pnorm``); a feature whose inputs
    are not given is 0. The one implementation of the module docstring's table, for both modes. A
    window's sketches are a few hundred numbers, so numpy calls, not arithmetic, are the cost: numpy
    takes every row dot product in one pass over stacked rows, the rest is a few floats per group."""
    gs = np.asarray(gs, dtype=np.float64)
    left, right = [gs], [gs]                              # ‖ŝ(g)‖²
    if prev_gs is not None:
        prev_gs = np.asarray(prev_gs, dtype=np.float64)
        left += [prev_gs, gs]                             # ‖ŝ(g′)‖², ŝ(g)·ŝ(g′)
        right += [prev_gs, prev_gs]
        flips = (np.count_nonzero(np.sign(gs) * np.sign(prev_gs) < 0, axis=1) / gs.shape[1]).tolist()
    if ps is not None and prev_ps is not None:
        prev_ps = np.asarray(prev_ps, dtype=np.float64)
        dp = np.asarray(ps, dtype=np.float64) - prev_ps
        left += [dp, prev_ps, gs]                         # ‖Δŝ(p)‖², ‖ŝ(p′)‖², ŝ(g)·Δŝ(p)
        right += [dp, prev_ps, dp]
    dots = (np.stack(left) * np.stack(right)).sum(axis=2).T.tolist()   # G rows of the dot products above
    gnorm = np.asarray(gnorm, dtype=np.float64).reshape(-1).tolist()
    m_prev = np.asarray(m_prev, dtype=np.float64).reshape(-1).tolist()
    pnorm = None if pnorm is None else np.asarray(pnorm, dtype=np.float64).reshape(-1).tolist()
    rows = []
    for g, dot in enumerate(dots):
        row = [_log(gnorm[g]), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        g_norm = math.sqrt(dot[0])
        if math.isfinite(m_prev[g]):
            row[1] = row[0] - _log(m_prev[g])
        if prev_gs is not None:
            row[2], row[3] = _ratio(dot[2], g_norm * math.sqrt(dot[1])), flips[g]
        if len(dot) > 3:
            du, u = math.sqrt(dot[-3]), math.sqrt(dot[-2])
            row[4], row[5] = _log(du) - _log(u), _ratio(dot[-1], g_norm * du)
        if pnorm is not None:
            row[6] = _log(pnorm[g])
        rows.append(row)
    return np.array(rows).reshape(len(dots), N_GROUP_FEATURES)


class NumpyFeatures:
    """Numpy-mode features: ``record(group, grad_flat, param_flat, sense, measure_norm)`` per group and step;
    ``sense``: the window's last step (all features), ``measure_norm``: fold ‖g‖ into m̂ (clip on)."""

    def __init__(self, n_groups: int, sketch_size: int, seed: int):
        self.n_groups, self.sketch_size, self.seed = n_groups, sketch_size, seed
        self.numel = np.zeros(n_groups, dtype=np.int64)          # 0 = not seen yet
        self.prev_grad = np.zeros((n_groups, sketch_size))
        self.prev_param = np.zeros((n_groups, sketch_size))
        self.has_prev_grad = np.zeros(n_groups, dtype=bool)
        self.has_prev_param = np.zeros(n_groups, dtype=bool)
        self.norm_ema = np.zeros(n_groups)
        self.norm_count = np.zeros(n_groups, dtype=np.int64)
        self.feat = np.zeros((n_groups, N_GROUP_FEATURES))
        self._idx: dict[int, np.ndarray] = {}

    def running_norm(self, group: int) -> float:
        """m̂: the bias-corrected EMA of the group's gradient norm (nan before the first record)."""
        n = int(self.norm_count[group])
        return float(self.norm_ema[group] / (1.0 - NORM_BETA ** n)) if n else float("nan")

    def record(self, group: int, grad: np.ndarray, param: np.ndarray | None = None, sense: bool = True,
               measure_norm: bool = True) -> None:
        grad = np.asarray(grad, dtype=np.float64).reshape(-1)
        if grad.size == 0:
            raise BrainError(f"record_grads: group {group} got an empty gradient")
        if int(self.numel[group]) not in (0, grad.size):
            raise BrainError(f"record_grads: group {group} had {self.numel[group]} elements, now {grad.size}")
        if param is not None:
            param = np.asarray(param, dtype=np.float64).reshape(-1)
            if param.size != grad.size:
                raise BrainError(f"record_grads: group {group}: param has {param.size} elements, "
                                 f"grad has {grad.size}")
        if group not in self._idx:
            self.numel[group] = grad.size
            self._idx[group] = sketch_indices(grad.size, self.sketch_size, self.seed, group)
        if not (sense or measure_norm):
            return
        gnorm = float(np.linalg.norm(grad))
        if sense:
            self._sense(group, grad, param, gnorm)
        self._fold_norm(group, gnorm)

    def _sense(self, group: int, grad: np.ndarray, param: np.ndarray | None, gnorm: float) -> None:
        """The group's features at this step (``sketch_features``), then its sketches become the previous ones."""
        idx = self._idx[group]
        gs = grad[idx][None]
        ps = None if param is None else param[idx][None]
        prev_gs = self.prev_grad[group][None] if self.has_prev_grad[group] else None
        prev_ps = self.prev_param[group][None] if ps is not None and self.has_prev_param[group] else None
        pnorm = None if param is None else [np.linalg.norm(param)]
        self.feat[group] = sketch_features([gnorm], [self.running_norm(group)], gs, prev_gs, ps, prev_ps, pnorm)[0]
        self.prev_grad[group] = gs[0]
        self.has_prev_grad[group] = True
        if ps is not None:
            self.prev_param[group] = ps[0]
            self.has_prev_param[group] = True

    def _fold_norm(self, group: int, gnorm: float) -> None:
        self.norm_ema[group] = NORM_BETA * self.norm_ema[group] + (1.0 - NORM_BETA) * gnorm
        self.norm_count[group] += 1

    def read_window(self) -> np.ndarray:
        """(G, 7) features of the window's sensed step."""
        return self.feat.copy()

    ARRAYS = ("numel", "prev_grad", "prev_param", "has_prev_grad", "has_prev_param", "norm_ema",
              "norm_count", "feat")

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {name: np.array(getattr(self, name)) for name in self.ARRAYS}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name in self.ARRAYS:
            setattr(self, name, np.array(arrays[name]))
        self._idx = {g: sketch_indices(int(n), self.sketch_size, self.seed, g)
                     for g, n in enumerate(self.numel) if n}

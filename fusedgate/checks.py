"""The numbers FusedGate takes, validated where they enter: one ValueError line naming the value.

* param-group hyperparameters (``check_group``): lr ≥ 0 and finite; weight_decay ≥ 0 and finite;
  momentum and each of betas in [0, 1); eps > 0 and finite; ns_steps an int ≥ 1 where the orthogonaliser
  runs (a group with gated matrices under a spec whose poles give ω > 0); NorMuon's beta2 in [0, 1).
  Checked at construction and in ``add_param_group``; ``check_scheduled`` re-checks, at every step and on
  host floats only, the values a scheduler may write (lr, momentum, betas).
* ``total_steps``: None or a positive int (not a bool, not a float) up to ``MAX_TOTAL_STEPS``.
* the ``loss`` given to ``step``: None, a real number or a real one-element tensor.
"""

from __future__ import annotations

import math
import numbers

import torch

MAX_TOTAL_STEPS = 2**31 - 1


def _number(value) -> float | None:
    """``value`` as a host float (0-d tensors included), or None when it is not a real number."""
    if type(value) is float:   # the common case, checked on every step: no further type tests
        return value
    if isinstance(value, bool):
        return None
    if torch.is_tensor(value):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            return None
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _in_range(where: str, name: str, value, low: float, high: float = math.inf, *, low_open: bool = False,
              high_open: bool = False) -> None:
    x = _number(value)
    low_ok = x is not None and (x > low if low_open else x >= low)
    high_ok = x is not None and (x < high if high_open else x <= high)
    if not (low_ok and high_ok and math.isfinite(x)):
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{where}: {name}={value!r} must be a finite number in {lo}, {hi}")


def check_scheduled(where: str, group: dict) -> None:
    """lr, momentum and betas of a param group (what schedulers write), as host floats."""
    _in_range(where, "lr", group["lr"], 0.0)
    _in_range(where, "momentum", group["momentum"], 0.0, 1.0, high_open=True)
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}: betas={betas!r} must be a pair (beta1, beta2)")
    for name, beta in zip(("betas[0]", "betas[1]"), betas):
        _in_range(where, name, beta, 0.0, 1.0, high_open=True)


def check_group(where: str, group: dict, orthogonalises: bool) -> None:
    """Every hyperparameter of a param group (see the module docstring); ``orthogonalises``: the group's
    ns_steps is used (it has gated matrices and some pole gives ω > 0)."""
    check_scheduled(where, group)
    _in_range(where, "weight_decay", group["weight_decay"], 0.0)
    _in_range(where, "eps", group["eps"], 0.0, low_open=True)
    _in_range(where, "beta2", group["beta2"], 0.0, 1.0, high_open=True)
    steps = group["ns_steps"]
    if orthogonalises and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
        raise ValueError(f"{where}: ns_steps={steps!r} must be an int ≥ 1 (the orthogonaliser's iterations)")


def check_total_steps(total_steps) -> int | None:
    """None or a positive int ≤ ``MAX_TOTAL_STEPS`` (returned as a Python int)."""
    if total_steps is None:
        return None
    if (isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral)
            or not 1 <= total_steps <= MAX_TOTAL_STEPS):
        raise ValueError(f"total_steps={total_steps!r} must be None or an int in [1, {MAX_TOTAL_STEPS}]")
    return int(total_steps)


def check_loss(loss) -> None:
    """None, a real Python number, or a real tensor of one element."""
    if loss is None:
        return
    if torch.is_tensor(loss):
        if loss.numel() != 1:
            raise ValueError(f"step(loss=...) takes a scalar (a 0-d tensor or a float), got a tensor of shape "
                             f"{tuple(loss.shape)}")
        if loss.is_complex() or loss.dtype == torch.bool:
            raise ValueError(f"step(loss=...) takes a real loss, got a {loss.dtype} tensor")
        return
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise ValueError(f"step(loss=...) takes a real scalar (a 0-d tensor or a float), got {loss!r}")

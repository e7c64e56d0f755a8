"""Choose Triton's interpreter when this machine has no CUDA device.

Triton decides, when a ``@triton.jit`` function is *defined*, whether it compiles for the GPU or runs
in the interpreter (``TRITON_INTERPRET=1``: each program is executed with numpy on the CPU). This
module is imported first by ``fusedgate.kernels``, before any kernel is defined, and sets
``TRITON_INTERPRET=1`` when ``torch.cuda.is_available()`` is false, unless the variable is already set.
On a CUDA machine nothing is changed: the kernels compile for the GPU and take CUDA tensors.

Triton's own library functions (``tl.sum``, ``tl.max``, ``tl.zeros``) are ``@triton.jit`` functions too,
defined when ``triton.language`` is first imported — often earlier and by someone else (``torch.optim``
imports ``torch._dynamo``, which imports Triton). When that happened before the variable was set, they
were built for the compiler and cannot be called from interpreted kernels. Nothing of Triton is
rewritten for that: the kernels call the library functions they use through ``library``, which under
the interpreter gives plain-Python equivalents built on the builtins (``tl.full``, ``tl.reduce``) that
the interpreter patches while a kernel runs — and only then.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def helper(fn):
    """``@triton.jit`` for device helper functions called from kernels. Under the interpreter the plain
    Python function is used instead: the interpreter re-patches ``triton.language`` on every call of a
    jit function (milliseconds each), while inside a running interpreted kernel the language is
    already patched, so a plain call computes the same thing."""
    if INTERPRET:
        return fn
    import triton

    return triton.jit(fn)


def interpreted_by(replacement):
    """``@helper`` for a device function whose interpreter form is ``replacement`` instead of itself."""
    def decorate(fn):
        return replacement if INTERPRET else helper(fn)

    return decorate


def scalar_bound(x):
    """Under the interpreter: a kernel's scalar (an int argument or a load), as the Python int ``range`` needs
    for a loop bound. Triton 3.6's interpreter converts a tensor bound with ``int(data)``, which NumPy 2
    refuses for the one-element 1-d array such a scalar holds there (newer Triton takes the element itself)."""
    return int(x.handle.data.reshape(-1)[0]) if hasattr(x, "handle") else int(x)


@interpreted_by(scalar_bound)
def loop_bound(x):
    """A kernel's loop bound, ``range(loop_bound(n))``: itself when compiling, ``scalar_bound`` under the
    interpreter."""
    return x


def _zeros(shape, dtype):
    import triton.language as tl

    return tl.full(shape, 0, dtype)


def _sum(x, axis=None):
    import triton.language as tl

    return tl.reduce(x, axis, tl.standard._sum_combine)   # the interpreter reduces this combine with numpy


def _max(x, axis=None):
    import triton.language as tl

    return tl.reduce(x, axis, tl.standard._elementwise_max)   # (likewise; integer and float32 inputs only)


_INTERPRETED = {"zeros": _zeros, "sum": _sum, "max": _max}


def library(function):
    """A Triton library function (``tl.sum``, ``tl.max``, ``tl.zeros``) to call inside kernels: itself when
    compiling; under the interpreter a plain-Python equivalent (for the reasons in the module docstring
    and in ``helper``) — whichever mode ``triton.language`` was imported in."""
    if not INTERPRET:
        return function
    name = getattr(function, "__name__", None) or function.fn.__name__
    if name not in _INTERPRETED:
        raise KeyError(f"fusedgate.kernels._interpret.library has no interpreter equivalent of tl.{name}")
    return _INTERPRETED[name]

"""Choose Triton's interpreter when this machine has no CUDA device.

Triton decides, when a ``@triton.jit`` function is *defined*, whether it compiles for the GPU or runs
in the interpreter (``TRITON_INTERPRET=1``: each program is executed with numpy on the CPU). This
module is imported first by ``fusedgate.kernels``, before any kernel is defined, and sets
``TRITON_INTERPRET=1`` when ``torch.cuda.is_available()`` is false, unless the variable is already set.
On a CUDA machine nothing is changed: the kernels compile for the GPU and take CUDA tensors.

Triton's own library functions (``tl.sum``, ``tl.max``, ...) are ``@triton.jit`` functions too, defined
when ``triton.language`` is first imported — often earlier and by someone else (``torch.optim`` imports
``torch._dynamo``, which imports Triton). When that happened before the variable was set, they were
built for the compiler and cannot be called from interpreted kernels; ``_interpret_triton_library``
rebuilds them for the interpreter in place (the same functions, wrapped as Triton's
``InterpretedFunction``), which is what importing Triton with the variable set would have produced.
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _interpret_triton_library() -> None:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    rebuilt: dict[int, InterpretedFunction] = {}
    namespaces = [module for name, module in list(sys.modules.items())
                  if module is not None and (name == "triton.language" or name.startswith("triton.language."))]
    for namespace in namespaces + [tl.core.tensor]:
        for attr, value in list(vars(namespace).items()):
            if isinstance(value, JITFunction):
                if id(value) not in rebuilt:
                    rebuilt[id(value)] = InterpretedFunction(value.fn)
                setattr(namespace, attr, rebuilt[id(value)])
    for attr, value in list(vars(tl.core.tensor).items()):   # tensor methods (x.sum()): bind self
        if isinstance(value, InterpretedFunction):
            setattr(tl.core.tensor, attr, _method(value))


def _method(function):
    def method(*args, **kwargs):
        return function(*args, **kwargs)
    return method


if INTERPRET:
    import triton.language as _tl
    from triton.runtime.jit import JITFunction as _JITFunction

    if isinstance(_tl.standard.sum, _JITFunction):
        _interpret_triton_library()


def helper(fn):
    """``@triton.jit`` for device helper functions called from kernels. Under the interpreter the plain
    Python function is used instead: the interpreter re-patches ``triton.language`` on every call of a
    jit function (milliseconds each), while inside a running interpreted kernel the language is
    already patched, so a plain call computes the same thing."""
    if INTERPRET:
        return fn
    import triton

    return triton.jit(fn)


def library(function):
    """A Triton library function (``tl.sum``, ``tl.max``) to call inside kernels: itself when compiling,
    its plain Python body under the interpreter (for the reason given in ``helper``)."""
    return getattr(function, "fn", function) if INTERPRET else function

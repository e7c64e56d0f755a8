"""``fusedgate.kernels._interpret``: the kernels run under Triton's interpreter whichever mode
``triton.language`` was imported in, and Triton's own functions are left as they were (nothing of the
process is rewritten at import). Runs in fresh interpreters, since the import order is the point."""

import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import os
    {first}
    import torch
    from triton.runtime.jit import JITFunction
    import triton.language as tl
    before = {{name: type(getattr(tl, name)) for name in ("sum", "max", "zeros", "cdiv")}}
    import fusedgate.kernels
    from fusedgate import FusedGate, GateSpec
    after = {{name: type(getattr(tl, name)) for name in before}}
    assert after == before, (before, after)
    results = []
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(6, 5)) for _ in range(2)] + [torch.nn.Parameter(torch.randn(7))]
        opt = FusedGate(params, spec=GateSpec.gated(), backend=backend, total_steps=5)
        for step in range(2):
            gen = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step(loss=torch.tensor(2.0 - step))
        results.append(torch.cat([p.detach().reshape(-1) for p in params]))
    worst = ((results[0] - results[1]).abs().max() / results[0].abs().max()).item()
    assert worst <= 1e-6, worst
    print("jit" if before["sum"] is JITFunction else "interpreted")
""")


@pytest.mark.parametrize("first,mode", [
    # triton.language imported for the compiler before TRITON_INTERPRET is set (as torch._dynamo can do)
    ("os.environ.pop('TRITON_INTERPRET', None); import triton.language", "jit"),
    # the variable set before Triton is imported
    ("os.environ['TRITON_INTERPRET'] = '1'", "interpreted"),
])
def test_kernels_run_without_rewriting_triton(first, mode):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the interpreter is chosen only without a CUDA device")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == mode


def test_a_loop_bound_is_a_python_int_under_the_interpreter_whatever_shape_triton_gives_a_scalar():
    """Triton 3.6's interpreter holds a kernel's scalar (an int argument, a scalar load) as a one-element 1-d
    array and converts a ``range`` bound with ``int(data)``, which NumPy 2 refuses; newer Triton holds a 0-d
    one. ``loop_bound`` hands ``range`` the Python int either way (checked on the real Triton 3.6 and 3.9: the
    kernel tests pass on both)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    from fusedgate.kernels import _interpret

    assert _interpret.INTERPRET and _interpret.loop_bound is _interpret.scalar_bound   # no CUDA here
    for data in (np.array([7], np.int32), np.array(7, np.int32)):
        bound = _interpret.loop_bound(tl.core.tensor(TensorHandle(data, tl.int32), tl.int32))
        assert type(bound) is int and list(range(0, bound, 3)) == [0, 3, 6]
    assert _interpret.loop_bound(5) == 5

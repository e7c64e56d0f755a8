"""Every Triton kernel compiles for CUDA (sm_80 and sm_90) with the installed Triton, without a GPU.

The interpreter runs code the compiler rejects; this catches that in CI. Runs in a subprocess because the
interpreter choice is made when kernels are defined: sm_80 with TRITON_INTERPRET=0 set, sm_90 as the README
writes it (no variable: the command restarts itself with TRITON_INTERPRET=0 on a machine without CUDA).
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_compiles_for_cuda(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if arch == 80:
        env["TRITON_INTERPRET"] = "0"
    command = [sys.executable, "-m", "fusedgate.kernels.compile_check", str(arch)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failures = {name: status for name, status in results.items() if status != "ok"}
    assert not failures, failures
    assert len(results) == 45   # every variant listed in compile_check.variants
    assert {"apply/bf16/cautious/ortho", "moments/bf16/ortho", "gate/ortho", "adamw_step/fp32", "param_sums",
            "param_flags"} <= set(results)


def test_the_aligned_variants_access_memory_128_bits_at_a_time():
    """The SASS of every ALIGNED element-wise variant (sm_90) holds 128-bit global loads and stores
    (``LDG.E.128``/``STG.E.128``: 4 float32 or 8 bf16 elements a thread at once); the variants without it hold
    none, since the tensors' addresses come from a table the compiler knows nothing of."""
    command = [sys.executable, "-m", "fusedgate.kernels.compile_check", "90", "--accesses"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    accesses = json.loads(done.stdout.strip().splitlines()[-1])
    elementwise = {name: counts for name, counts in accesses.items()
                   if name.split("/")[0] in ("nonfinite", "step", "apply", "adamw_step", "moments")}
    assert len(elementwise) == 34
    for name, counts in elementwise.items():
        vectors = counts.get("LDG.E.128", 0)
        assert (vectors > 0) == name.endswith("/aligned"), (name, counts)
        if name.endswith("/aligned") and not name.startswith("nonfinite"):
            assert counts.get("STG.E.128", 0) > 0, (name, counts)


def test_a_bad_architecture_is_one_line():
    command = [sys.executable, "-m", "fusedgate.kernels.compile_check", "sm90"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "expected one CUDA architecture" in done.stderr

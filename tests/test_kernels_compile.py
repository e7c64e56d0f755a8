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
    assert len(results) == 28   # every variant listed in compile_check.variants
    assert {"apply/bf16/cautious/ortho", "moments/bf16/ortho", "gate/ortho", "adamw_step/fp32", "param_sums",
            "param_flags"} <= set(results)


def test_a_bad_architecture_is_one_line():
    command = [sys.executable, "-m", "fusedgate.kernels.compile_check", "sm90"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "expected one CUDA architecture" in done.stderr

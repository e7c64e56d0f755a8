"""Every Triton kernel compiles for CUDA (sm_80 and sm_90) with the installed Triton, without a GPU.

The interpreter runs code the compiler rejects; this catches that in CI. Runs in a subprocess with
TRITON_INTERPRET=0 because the interpreter choice is made when kernels are defined.
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_compiles_for_cuda(arch):
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    command = [sys.executable, "-m", "fusedgate.kernels.compile_check", str(arch)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failures = {name: status for name, status in results.items() if status != "ok"}
    assert not failures, failures
    assert len(results) == 24   # every variant listed in compile_check.variants
    assert {"apply/bf16/cautious/ortho", "moments/bf16/ortho", "gate/ortho", "adamw_step/fp32"} <= set(results)

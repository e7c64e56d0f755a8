"""``python -m fusedgate.bench.gpu_probe --dry-run``: the follow-up GPU probe of issue 18, run on the CPU so that it
cannot rot before a GPU is lent again. One run in a subprocess (Triton's interpreter must be chosen before
``fusedgate.kernels`` is imported): every section writes its part, the numbers are real measurements of this
machine, the Newton–Schulz tilings agree with torch's iteration, and the two files are valid."""

import json
import os
import subprocess
import sys


def test_the_probe_dry_run_writes_every_section(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "fusedgate.bench.gpu_probe", "--out", str(tmp_path), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "probe.json").read_text())
    text = (tmp_path / "probe.txt").read_text()

    host = {row["contestant"]: row for row in results["host"]}
    assert set(host) == {"adamw_fused", "fg_adamw_triton"}
    for row in host.values():
        assert "error" not in row, row
        assert row["event_us"] > 0 and row["host_us"] > 0
    assert host["fg_adamw_triton"]["graph_us"] == "no CUDA"    # graphs need a GPU; the column says why it is empty
    assert host["adamw_fused"]["graph_us"] == "not tried"     # only FusedGate's step is known to capture
    assert "| fg_adamw_triton | matrix | 64x64 | fp32 |" in text

    blocks = results["blocks"]
    assert [(row["block"], row["warps"], row["vector"]) for row in blocks] == [(4096, 4, True), (1024, 4, True),
                                                                               (4096, 4, False)]
    assert all("error" not in row and row["us"] > 0 and row["gbps"] > 0 for row in blocks), blocks
    assert "| fg_gated_triton | 64x64 | 1024 | 4 | where aligned |" in text
    assert "| fg_gated_triton | 64x64 | 4096 | 4 | off |" in text

    ns = results["ns"]
    assert [row["size"] for row in ns] == [32, 32, 32, 48, 48, 48]
    assert all("error" not in row and row["us"] > 0 for row in ns), ns
    assert all(row["diff_vs_torch"] < 1e-5 for row in ns)          # float32 on the CPU: the same iteration
    assert sum(row["tiling"] == "torch" for row in ns) == 2

    assert "cProfile of 2 calls of fg_adamw_triton" in results["pyprofile"]
    assert results["compiled"].startswith("fg_adamw_compiled 64x64 fp32: ran")

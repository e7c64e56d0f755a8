"""fusedgate.bench.bad_inputs: the probe classifies real subprocess outcomes, and a run writes its table."""

import subprocess
import sys

from fusedgate.bench.bad_input_probes import Probe, all_probes
from fusedgate.bench.bad_inputs import classify


def test_classify_each_outcome(tmp_path):
    error = Probe("spec", "bad", argv=("spec", "show", "x"))
    ok = Probe("spec", "good", argv=("spec", "show", "default"), expect="ok", output='"version"')
    assert classify(error, 2, "", "error: one line\n", tmp_path).verdict == "clean error"
    assert classify(error, 2, "", "UserWarning: first\nerror: then\n", tmp_path).verdict == "messy error"
    assert classify(error, 1, "", "Traceback (most recent call last):\n  ...\nValueError: x\n", tmp_path).verdict \
        == "traceback"
    assert classify(error, 1, "", "MemoryError\n", tmp_path).verdict == "runaway"
    assert classify(error, -9, "", "", tmp_path).verdict == "runaway"
    assert classify(error, 0, "accepted\n", "", tmp_path).verdict == "silent acceptance"
    assert classify(ok, 0, '{"version": 2}', "", tmp_path).verdict == "handled"
    assert classify(ok, 0, "something else", "", tmp_path).verdict == "silent acceptance"


def test_the_probe_list_is_large_and_unique():
    probes = all_probes()
    assert len(probes) >= 100 and len({(p.area, p.name) for p in probes}) == len(probes)
    assert {p.area for p in probes} >= {"spec", "train", "search", "brain-eval", "bench", "FusedGate", "GateSpec"}


def test_a_run_writes_its_table(tmp_path):
    argv = ["--out", str(tmp_path), "--only", "show bogus,from_dict of a list", "--timeout", "120"]
    done = subprocess.run([sys.executable, "-m", "fusedgate.bench.bad_inputs", *argv], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    assert "2 bad inputs tried: 2 clean error, 0 handled, 0 hang" in done.stdout  # a CLI and an API probe
    table = (tmp_path / "bad_inputs.md").read_text()
    assert "| show bogus (not a file, not a preset)" in table and "clean error" in table

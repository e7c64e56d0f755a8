"""The console script, run as a user runs it."""

import json
import subprocess
import sys

from fusedgate import GateSpec, __version__


def fusedgate(*args):
    return subprocess.run([sys.executable, "-m", "fusedgate", *args], capture_output=True, text=True, timeout=120)


def test_version():
    out = fusedgate("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"fusedgate {__version__}"


def test_spec_show_and_validate(tmp_path):
    shown = fusedgate("spec", "show", "default")
    assert shown.returncode == 0 and GateSpec.from_json(shown.stdout) == GateSpec.default()
    path = tmp_path / "s.json"
    path.write_text(shown.stdout)
    ok = fusedgate("spec", "validate", str(path))
    assert ok.returncode == 0 and "valid" in ok.stdout
    data = json.loads(shown.stdout)
    data["aggressive"]["beta2"] = 1.5
    path.write_text(json.dumps(data))
    bad = fusedgate("spec", "validate", str(path))
    assert bad.returncode == 1 and "aggressive.beta2=1.5" in bad.stderr and "Traceback" not in bad.stderr
    missing = fusedgate("spec", "show", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr  # show: a usage error


def test_no_subcommand_prints_help():
    out = fusedgate()
    assert out.returncode == 2 and "spec" in out.stdout

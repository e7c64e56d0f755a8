"""The console script, run as a user runs it."""

import argparse
import json
import subprocess
import sys

import pytest

from fusedgate import GateSpec, __version__
from fusedgate.cli import SUBCOMMANDS, build_parser


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


def _flags(parser, path=()):
    """(sub-command path, action) of every argument of ``parser`` and its sub-commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_flag_has_help_text_and_says_its_default(command):
    parser = build_parser([command])
    seen = 0
    for path, action in _flags(parser):
        if not path or path[0] != command:
            continue
        seen += 1
        where = " ".join((*path, *action.option_strings)) or action.dest
        assert action.help, f"{where} has no help text"
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if action.option_strings and not switch:
            assert "default" in action.help, f"{where}: its help does not say its default ({action.help!r})"
    assert seen > 0


def test_brain_eval_help_names_the_tasks():
    from fusedgate.brain.tasks import TASKS

    out = fusedgate("brain-eval", "--help")
    assert out.returncode == 0 and all(task in out.stdout for task in TASKS)

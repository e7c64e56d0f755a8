"""Every command README.md documents runs as written and exits 0, at the smallest sizes: the ``test`` preset, a
few steps, one or two seeds. ``RUNS`` maps each README command to the flags that shrink it (a flag given in the
README gets a small value, others are added); a command added to the README without an entry here fails
``test_every_readme_command_is_run``. Commands that share files (a search, then its report and resume) run in
order in one folder."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
STARTS = ("fusedgate ", "python -m fusedgate", "torchrun ")



def train(out: str) -> tuple[dict, list]:
    return {"--preset": "test", "--seed": "1"}, ["--steps", "2", "--no-progress", "--out", out]


BRAIN = ({"--seeds": "1", "--tasks": "nanochat", "--optimizers": "adamw"},
         ["--steps", "3", "--no-overhead", "--no-progress", "--out", "brain"])
SEARCH = {"--preset": "test", "--seeds": "0-1", "--horizons": "2,3", "--generations": "1", "--population": "2",
          "--survivors": "1", "--screen-steps": "2", "--confirm-steps": "3", "--n": "2"}
SEARCH_EXTRA = ["--final-eval-tokens", "256", "--workers", "1", "--no-progress"]
RUN_EXTRA = ["--lr-scales", "1,2", "--transfer-preset", "test", "--transfer-steps", "3", "--holdout-seeds", "5,6",
             "--ladder", "0.8,1", *SEARCH_EXTRA]

# folder -> [(README command, (flag values replaced, flags added))], run in this order in that folder
RUNS: dict[str, list[tuple[str, tuple[dict, list]]]] = {
    "train": [
        ("fusedgate train --preset tiny --compare", train("run")),
        ("fusedgate train --preset tiny --compare --seed S", train("run-seed")),
        ("fusedgate train --preset tiny --compare --nproc 2", train("run-nproc")),
        ("fusedgate train", ({}, ["--help"])),
        ("fusedgate train --compare baseline,fusedgate:gated --seeds 0-4 --ladder 0.8,0.9,1,1.15",
         ({"--seeds": "0-1", "--ladder": "0.8,1"}, ["--preset", "test", "--steps", "4", "--no-progress", "--out",
                                                    "run-ladder"])),
        ("fusedgate spec show default", ({}, [])),
    ],
    "brain": [
        ("fusedgate brain-eval --seeds 5", BRAIN),
        ("fusedgate brain-eval --tasks nanochat --optimizers adamw --scenarios schedule --seeds 3", BRAIN),
        ("fusedgate brain-eval --init my_brain.json ...", BRAIN),
        ("fusedgate brain-eval --tasks heldout --seeds 5", BRAIN),
        ("fusedgate brain-eval --tasks regression,mlp,heldout --seeds 5", BRAIN),
        ("fusedgate brain-eval --from old/brain_eval.json --out new",   # the runs the commands above saved
         ({"--from": "brain/brain_eval.json", "--out": "rewritten"}, [])),
        ("python -m fusedgate.brain.overhead --out overhead/",
         ({}, ["--blocks", "1", "--steps", "1", "--repeats", "4"])),
    ],
    "search": [
        ("fusedgate search", ({}, ["--help"])),
        ("fusedgate search noise --seeds 0-7 --horizons 100,300", (SEARCH, ["--preset", "test", *SEARCH_EXTRA])),
        ("fusedgate search run --preset tiny --generations 4 --population 6 --survivors 2 --screen-steps 100 "
         "--horizons 300,600 --seeds 10-17", (SEARCH, RUN_EXTRA)),
        ("fusedgate search report", ({}, [])),
        ("fusedgate search resume", ({}, ["--workers", "1", "--no-progress"])),
        ("fusedgate search calibrate --n 8", (SEARCH, ["--preset", "test", *SEARCH_EXTRA])),
    ],
    "search-measured": [
        ("fusedgate search noise --preset tiny --seeds 0-7 --horizons 100,300 --workers 1",
         (SEARCH, SEARCH_EXTRA[:2] + SEARCH_EXTRA[4:])),
        ("fusedgate search calibrate --preset tiny --n 8 --screen-steps 100 --confirm-steps 300 --seeds 0",
         ({**SEARCH, "--seeds": "0"}, SEARCH_EXTRA)),
    ],
    "bench": [
        ("fusedgate bench", ({}, ["--device", "cpu", "--quick", "--cases", "matrix", "--sizes", "16", "--dtypes",
                                  "fp32", "--threads", "1", "--budget", "0.01", "--no-progress", "--out", "out"])),
        ("python -m fusedgate.bench.cpu_step", ({}, ["--blocks", "2", "--block", "1"])),
        ("python -m fusedgate.bench.distributed_bytes", ({}, ["--depth", "1", "--vocab", "64", "--worlds", "1", "2"])),
        ("python -m fusedgate.bench.distributed_bytes --depth 4 --worlds 1 2 --presets nanochat default gated muon "
         "adamw",
         ({"--depth": "1", "--worlds": "1"}, ["--vocab", "64"])),
        ("python -m fusedgate.bench.compiled_step --depth 2 --blocks 30 --block 10",
         ({"--depth": "1", "--blocks": "2", "--block": "1"}, ["--warmup", "1"])),
        ("python -m fusedgate.bench.bad_inputs --out DIR", ({"--out": "probe"}, ["--only", "show bogus"])),
    ],
}
NEEDS_CUDA = {
    "torchrun --nproc-per-node 8 -m fusedgate train --preset d20 --device cuda --optimizer fusedgate":
        ({"--nproc-per-node": "1", "--preset": "test"}, ["--steps", "2", "--no-progress", "--out", "run"]),
}
ELSEWHERE = {  # run as written by another test
    "python -m fusedgate.kernels.compile_check 90":
        "tests/test_kernels_compile.py::test_every_kernel_compiles_for_cuda[90]",
}


def _split_code(text: str) -> tuple[str, str]:
    """(code lines: fenced or indented by 4, prose lines) of a markdown text."""
    code, prose, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            code.append(line)
        else:
            prose.append(line)
    return "\n".join(code), "\n".join(prose)


def readme_commands(text: str) -> list[str]:
    """The fusedgate commands of a README: code lines (comments and ``pip install ... &&`` dropped, ``\\``
    continuations joined) and inline code spans, whitespace normalised, in order, each once."""
    code, prose = _split_code(text)
    found = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].split("&&")[-1].strip()
        if line.startswith(STARTS):
            found.append(" ".join(line.split()))
    found += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)
              if " ".join(span.split()).startswith(STARTS)]
    return list(dict.fromkeys(found))


def small_argv(command: str, replaced: dict, added: list) -> list[str]:
    """``command`` as an argv for this interpreter, with ``replaced`` flag values and ``added`` flags; the
    README's ``...`` stands for the added flags."""
    tokens = [t for t in shlex.split(command) if t != "..."]
    for i, token in enumerate(tokens[:-1]):
        if token in replaced:
            tokens[i + 1] = replaced[token]
    head = {"fusedgate": [sys.executable, "-m", "fusedgate"], "python": [sys.executable],
            "torchrun": [sys.executable, "-m", "torch.distributed.run"]}[tokens[0]]
    return head + tokens[1:] + added


def test_every_readme_command_is_run():
    covered = {command for runs in RUNS.values() for command, _ in runs} | set(NEEDS_CUDA) | set(ELSEWHERE)
    missing = [command for command in readme_commands(README.read_text(encoding="utf-8")) if command not in covered]
    assert not missing, f"README commands with no entry in RUNS: {missing}"


def _run(argv: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}: {done.stderr[-1500:]}"


@pytest.mark.parametrize("folder", list(RUNS))
def test_the_readme_commands_run_as_written(folder, tmp_path):
    (tmp_path / "my_brain.json").write_text(json.dumps({"hypergrad": 0.0}))
    for command, (replaced, added) in RUNS[folder]:
        _run(small_argv(command, replaced, added), tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("command", list(NEEDS_CUDA))
def test_the_readme_cuda_commands_run_as_written(command, tmp_path):
    _run(small_argv(command, *NEEDS_CUDA[command]), tmp_path)

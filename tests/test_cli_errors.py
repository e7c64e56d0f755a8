"""Bad input to ``fusedgate spec``, ``train`` and ``bench`` is one line on stderr naming the problem (no
traceback), exit code 2 for a usage error, and nothing trained or measured; flags are applied or refused,
never silently ignored; ``bench`` writes under the current directory by default. Real runs of the `test`
preset (a micro model, a few steps) on the stdlib corpus."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedgate.bench.cli as bench_cli
from fusedgate.cli import main as cli_main
from fusedgate.nanochat.checkpoint import load_checkpoint
from fusedgate.nanochat.data import load_documents
from fusedgate.nanochat.metrics import read_metrics
from fusedgate.spec import GateSpec

FIVE_THOUSAND_DIGITS = "9" * 5000


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and len(err) < 400, err[:600]
    return err


def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit code, the one-line stderr) of ``fusedgate *argv``, in this process; argparse errors included."""
    try:
        code = cli_main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, one_line(capsys)


@pytest.fixture
def bad_spec_files(tmp_path):
    files = {
        "binary": b"\x00\xff\xfe\x01PK\x03\x04 not a spec",
        "latin-1": '{"version": 1, "units": "adam", "lr": 0.001, "note": "d\xe9j\xe0"}'.encode("latin-1"),
        "5000 digits": ('{"version": 1, "lr": ' + FIVE_THOUSAND_DIGITS + "}").encode(),
        "400-digit integer": ('{"version": 1, "ns_steps": 1' + "0" * 400 + "}").encode(),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.json"
        paths[name].write_bytes(data)
    return paths


EXPECTED_SPEC_ERROR = {
    "binary": "not UTF-8 text (byte 0xff at offset 1)",  # 0x00 decodes; 0xff is the first bad byte
    "latin-1": "not UTF-8 text (byte 0xe9",
    "5000 digits": "value has 5000 digits",
    "400-digit integer": "ns_steps: an integer of 1329 bits is outside its bound [1, 10]",
}


# ------------------------------------------------------------------------------------------------ spec files
@pytest.mark.parametrize("kind", list(EXPECTED_SPEC_ERROR))
def test_spec_cli_bad_file_is_one_line(kind, bad_spec_files, capsys):
    path = str(bad_spec_files[kind])
    code, err = run_cli(["spec", "validate", path], capsys)
    assert code == 1 and err.startswith(f"fusedgate spec: {path}: ") and EXPECTED_SPEC_ERROR[kind] in err
    code, err = run_cli(["spec", "show", path], capsys)
    assert code == 2 and EXPECTED_SPEC_ERROR[kind] in err  # show: a usage error


@pytest.mark.parametrize("kind", list(EXPECTED_SPEC_ERROR))
def test_train_bad_spec_file_is_one_line(kind, bad_spec_files, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["train", "--preset", "test", "--optimizer", "fusedgate", "--spec",
                         str(bad_spec_files[kind]), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and err.startswith(f"error: --spec {bad_spec_files[kind]}: ")
    assert EXPECTED_SPEC_ERROR[kind] in err and not out.exists()


def test_spec_json_nested_too_deeply_is_a_spec_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        GateSpec.from_json("[" * 100_000 + "]" * 100_000)


# ------------------------------------------------------------------------------------------------ train
@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "fusedgate", "--gate-log-every", "0"], "gate_log_every must be an integer from 1"),
    (["--eval-every", "0"], "eval_every must be an integer from 1"),
    (["--checkpoint-every", "-3"], "checkpoint_every must be an integer from 0"),
    (["--threads", "0"], "--threads must be from 1"),
    (["--seed", "-1"], "seed must be an integer from 0"),
    (["--steps", FIVE_THOUSAND_DIGITS], "argument --steps: a 5000-digit number is too large"),
    (["--seed", "9" * 25], "seed must be an integer from 0 to 18446744073709551615"),
    (["--device", "mps"], "device 'mps' is not available on this machine"),
    (["--device", "cuda:7"], "device 'cuda:7' is not available on this machine"),
    (["--compare", ","], "--compare takes two or more distinct entries, got ','"),
    (["--lr-scale", "nan"], "argument --lr-scale: expected a finite number above 0"),
])
def test_train_bad_flag_is_one_line_and_trains_nothing(argv, message, tmp_path, capsys):
    if "mps" in argv and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    out = tmp_path / "run"
    code, err = run_cli(["train", "--preset", "test", "--steps", "2", "--out", str(out), "--no-progress", *argv],
                        capsys)
    assert code == 2 and message in err and not out.exists()


def test_train_read_only_out_is_one_line(read_only_folder, capsys):
    for out in (read_only_folder, read_only_folder / "new-run"):
        code, err = run_cli(["train", "--preset", "test", "--steps", "2", "--out", str(out), "--no-progress"],
                            capsys)
        assert code == 2 and err.startswith(f"error: --out: cannot write into {out}: ") and "not writable" in err
        assert not (read_only_folder / "metrics.jsonl").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step FusedGate run (default spec, seed 0) with its checkpoint."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli_main(["train", "--preset", "test", "--optimizer", "fusedgate", "--steps", "4", "--out", str(out),
                     "--no-progress"]) == 0
    return out


def test_resume_checkpoint_with_missing_keys_is_one_line(finished_run, tmp_path, capsys):
    ckpt = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    del ckpt["config"], ckpt["gate_trajectory"]
    broken = tmp_path / "broken.pt"
    torch.save(ckpt, broken)
    code, err = run_cli(["train", "--resume", str(broken), "--no-progress"], capsys)
    assert code == 2 and f"checkpoint {broken} is incomplete: it lacks gate_trajectory, config" in err

    ckpt = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    ckpt["config"]["from_the_future"] = 1
    torch.save(ckpt, broken)
    code, err = run_cli(["train", "--resume", str(broken), "--no-progress"], capsys)
    assert code == 2 and "config fields this fusedgate does not know: from_the_future" in err


@pytest.mark.parametrize("argv, message", [
    (["--seed", "3"], "different seed: it has seed=0, this run needs 3"),
    (["--optimizer", "adamw"], "different optimizer: it has optimizer='fusedgate', this run needs 'adamw'"),
    (["--spec", "muon"], "different spec"),
    (["--lr-scale", "2"], "different lr_scale"),
    (["--steps", "3"], "steps=3 would shorten the run of checkpoint"),
    (["--optimizer", "baseline", "--spec", "muon"], "--spec applies to FusedGate only"),
    (["--compare"], "--compare cannot --resume"),
    (["--overwrite"], "--overwrite does nothing with --resume"),
])
def test_resume_refuses_flags_that_conflict_with_the_checkpoint(argv, message, finished_run, capsys):
    before = (finished_run / "checkpoint.pt").read_bytes()
    code, err = run_cli(["train", "--resume", str(finished_run), "--no-progress", *argv], capsys)
    assert code == 2 and message in err
    assert (finished_run / "checkpoint.pt").read_bytes() == before


def test_resume_honours_a_longer_steps_and_agreeing_flags(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl"):
        (run / name).write_bytes((finished_run / name).read_bytes())
    assert cli_main(["train", "--resume", str(run), "--steps", "6", "--seed", "0", "--optimizer", "fusedgate",
                     "--spec", "default", "--no-progress"]) == 0
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 6 and ckpt["total_steps"] == 6 and len(ckpt["train_curve"]) == 6
    assert ckpt["optimizer_state"]["fusedgate"]["total_steps"] == 6  # the step-fraction sensor's horizon
    assert [r["step"] for r in read_metrics(run) if r["type"] == "train"] == list(range(6))
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "baseline", "--spec", "muon"], "--spec applies to FusedGate only and this run trains baseline"),
    (["--optimizer", "adamw", "--spec", "default"], "--spec applies to FusedGate only and this run trains adamw"),
    (["--compare", "baseline,adamw", "--spec", "muon"], "add fusedgate to --compare"),
    (["--compare", "--optimizer", "adamw"], "--optimizer does nothing with --compare"),
])
def test_train_refuses_flags_it_would_ignore(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["train", "--preset", "test", "--steps", "2", "--out", str(out), "--no-progress", *argv],
                        capsys)
    assert code == 2 and message in err and not out.exists()


def test_spec_alone_trains_fusedgate_with_that_spec(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "--preset", "test", "--steps", "2", "--spec", "muon", "--out", str(out),
                     "--no-progress"]) == 0
    config = read_metrics(out)[0]["config"]
    assert config["optimizer"] == "fusedgate" and GateSpec.from_dict(config["spec"]) == GateSpec.muon()
    capsys.readouterr()


def test_a_single_binary_data_file_is_refused(tmp_path, capsys):
    data = tmp_path / "weights.bin"
    data.write_bytes(torch.arange(50_000, dtype=torch.int32).numpy().tobytes())
    out = tmp_path / "run"
    code, err = run_cli(["train", "--preset", "test", "--steps", "2", "--data", str(data), "--out", str(out),
                         "--no-progress"], capsys)
    assert code == 2 and f"data file {data} is binary" in err and not out.exists()


def test_a_single_parquet_file_is_read_as_a_shard(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["first document", "", "second document"]}), tmp_path / "shard.parquet")
    label, docs = load_documents(str(tmp_path / "shard.parquet"), 1 << 20)
    assert docs == [("shard.parquet#0", b"first document"), ("shard.parquet#2", b"second document")]


# ------------------------------------------------------------------------------------------------ bench
BENCH_TINY = ["bench", "--device", "cpu", "--quick", "--cases", "matrix", "--sizes", "16", "--dtypes", "fp32",
              "--contestants", "adamw_fused", "--threads", "1", "--budget", "0.01", "--no-progress"]


@pytest.mark.parametrize("argv, message", [
    (["--sizes", FIVE_THOUSAND_DIGITS], "argument --sizes: a 5000-digit number is too large"),
    (["--sizes", "9999999"], "--sizes: at most 65536"),
    (["--depths", "1000"], "--depths: at most 64"),
    (["--threads", "9" * 25], "--threads must be positive and at most 1024"),
    (["--threads", "0"], "--threads must be positive"),
    (["--device", "mps"], "--device 'mps': only cpu and cuda are benchmarked"),
])
def test_bench_bad_flag_is_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["bench", "--device", "cpu", "--quick", "--out", str(out), "--no-progress", *argv], capsys)
    assert code == 2 and err.startswith("fusedgate bench: error:") and message in err and not out.exists()


def test_bench_infinite_budget_is_refused(tmp_path):
    # a subprocess with a timeout, in case an accepted infinite budget measures until the repetition cap
    done = subprocess.run([sys.executable, "-m", "fusedgate", *BENCH_TINY, "--budget", "inf", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "argument --budget: expected a finite number above 0 and at most 3,600" \
        in done.stderr
    assert not (tmp_path / "out").exists()


def test_bench_read_only_out_is_refused_before_measuring(read_only_folder, capsys):
    code, err = run_cli([*BENCH_TINY, "--out", str(read_only_folder / "results")], capsys)
    assert code == 2 and "not writable" in err
    assert capsys.readouterr().out == ""  # nothing measured


def test_bench_rerender_of_a_binary_file_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, err = run_cli(["bench", "--rerender", str(path)], capsys)
    assert code == 2 and f"cannot read results JSON {path}: it is not UTF-8 text (byte 0x89 at offset 0)" in err


def test_bench_writes_under_the_current_directory_by_default(tmp_path, monkeypatch, capsys):
    package_results = Path(bench_cli.__file__).resolve().parent / "results"
    assert not Path(bench_cli.DEFAULT_OUT).is_absolute()  # checked first: an old default would overwrite
    def files(folder):
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}

    before = files(package_results)
    monkeypatch.chdir(tmp_path)
    assert cli_main(BENCH_TINY) == 0
    assert sorted(p.name for p in (tmp_path / "bench-results").iterdir()) == ["cpu.json", "cpu.md", "cpu.png"]
    assert files(package_results) == before
    assert f"wrote {Path('bench-results') / 'cpu.json'}" in capsys.readouterr().out

"""``fusedgate bench`` at tiny CPU sizes: the files are written and every number in them follows from the
measurements by the stated formulas. No timing is asserted."""

import json
import math
import re
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fusedgate import GateSpec
from fusedgate import reference as R
from fusedgate.bench import contestants as C
from fusedgate.bench import report, suite
from fusedgate.bench.targets import evaluate
from fusedgate.bench.timing import flush_buffer, percentile
from fusedgate.bench.workloads import matrix_workload, nanochat_shapes, ns_flops
from fusedgate.cli import main as cli_main

CPU_CONTESTANTS = ("adamw_fused", "adamw_foreach", "fg_gated_ref", "ns_torch")
TRITON_CONTESTANTS = ("fg_adamw_triton", "fg_gated_triton", "fg_default_triton", "ns_triton")
# design bytes per param: 2·p + g + 2·(m + v)
BYTES_PER_PARAM = {
    ("adamw_fused", "fp32"): 28,
    ("adamw_foreach", "fp32"): 28,
    ("fg_gated_ref", "fp32"): 28,
    ("adamw_fused", "bf16"): 14,
    ("adamw_foreach", "bf16"): 14,
    ("fg_gated_ref", "bf16"): 22,
    # the compiled backend (an extra backend: its rows join automatically) moves what the reference moves
    ("fg_adamw_compiled", "fp32"): 28,
    ("fg_gated_compiled", "fp32"): 28,
    ("fg_adamw_compiled", "bf16"): 22,
    ("fg_gated_compiled", "bf16"): 22,
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = cli_main(
        ["bench", "--device", "cpu", "--quick", "--out", str(out), "--threads", "1", "--no-progress"]
    )
    return code, out


def test_quick_run_writes_three_files(quick_run):
    code, out = quick_run
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["cpu.json", "cpu.md", "cpu.png"]
    image = matplotlib.image.imread(out / "cpu.png")
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    md = (out / "cpu.md").read_text()
    assert "CPU numbers" in md and "## Targets" in md
    assert re.search(r"^\| case +\| dtype +\| size +\| params +\|", md, re.M)
    for name in CPU_CONTESTANTS + TRITON_CONTESTANTS:
        assert f"`{name}`" in md


def test_quick_run_numbers_follow_from_measurements(quick_run):
    _, out = quick_run
    run = json.loads((out / "cpu.json").read_text())
    assert run["environment"]["device"] == "cpu" and run["kind"] == "quick"
    copy_gbps = run["copy"]["gbps"]
    assert copy_gbps == pytest.approx(run["copy"]["bytes"] / run["copy"]["timing"]["median_s"] / 1e9)
    records = run["results"]
    rows = {(r["case"], r["size"], r["dtype"]) for r in records}
    assert rows == {("matrix", s, d) for s in ("64x64", "128x128") for d in ("fp32", "bf16")} | {
        ("nanochat", "d1", d) for d in ("fp32", "bf16")
    } | {("newton_schulz", s, "fp32") for s in ("64x64", "128x128")}
    by_key = {(r["case"], r["size"], r["dtype"], r["contestant"]): r for r in records}
    plan = suite.PLANS["quick"]
    for r in records:
        if r["contestant"] in TRITON_CONTESTANTS:
            assert r["status"] == "unavailable" and "CUDA" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert plan.min_reps <= r["reps"] <= plan.max_reps
        baseline = by_key[(r["case"], r["size"], r["dtype"], C.BASELINE[r["case"]])]
        assert r["ratio"] == pytest.approx(r["median_ms"] / baseline["median_ms"])
        if r["case"] == "newton_schulz":
            n = int(r["size"].split("x")[0])
            assert r["tflops"] == pytest.approx(r["flops"] / (r["median_ms"] / 1e3) / 1e12)
            assert r["flops"] == ns_flops(n, n, C.NS_STEPS)
            assert r["rel_err"] < 1e-4  # fp32 torch matmul against a float64 run
        else:
            assert r["bytes_per_param"] == BYTES_PER_PARAM[(r["contestant"], r["dtype"])]
            assert r["gbps"] == pytest.approx(r["bytes"] / (r["median_ms"] / 1e3) / 1e9)
            assert r["pct_copy"] == pytest.approx(100 * r["gbps"] / copy_gbps)
    assert by_key[("nanochat", "d1", "fp32", "adamw_fused")]["params"] == 12 * 64 * 64
    assert all(t["status"] == "not measured" for t in run["targets"])


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a CUDA machine the Triton contestants are timed for real"
)
def test_triton_contestants_run_under_the_interpreter(tmp_path):
    """In a fresh process (Triton must pick its interpreter before torch's optimizers import it)."""
    names = ",".join(TRITON_CONTESTANTS)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusedgate",
            "bench",
            "--device",
            "cpu",
            "--quick",
            "--triton-interpreter",
            "--cases",
            "matrix,newton_schulz",
            "--sizes",
            "64",
            "--ns-sizes",
            "64",
            "--dtypes",
            "fp32",
            "--contestants",
            names,
            "--out",
            str(tmp_path),
            "--threads",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    records = {r["contestant"]: r for r in json.loads((tmp_path / "cpu.json").read_text())["results"]}
    for name in TRITON_CONTESTANTS:
        assert records[name]["status"] == "interpreted", records[name]
    assert records["fg_gated_triton"]["bytes_per_param"] == 28
    assert records["ns_triton"]["rel_err"] < 1e-4  # fp32 dots in the interpreter vs a float64 run
    assert "ratio" not in records["ns_triton"]  # interpreted times are not compared


def test_ns_flops_match_torch_flop_counter():
    for rows, cols in ((96, 40), (32, 32), (24, 80)):
        with FlopCounterMode(display=False) as counter:
            R.newton_schulz(torch.randn(rows, cols), 5)
        assert ns_flops(rows, cols, 5) == counter.get_total_flops()


def test_nanochat_shapes_match_the_model():
    from fusedgate.nanochat.model import GPT, GPTConfig

    for depth in (1, 2):
        model = GPT(GPTConfig.from_depth(depth, vocab_size=64, sequence_len=8))
        assert nanochat_shapes(depth) == tuple(tuple(p.shape) for p in model.matrix_params())


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        values = sorted(rng.exponential(size=n).tolist())
        for q in (0.0, 0.1, 0.5, 0.9, 1.0):
            assert percentile(values, q) == pytest.approx(np.percentile(values, 100 * q))


def test_a_failing_contestant_is_reported_not_raised():
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded\nsecond line")

    def missing(*args, **kwargs):
        raise C.Unavailable("no such kernel")

    device = torch.device("cpu")
    flush = flush_buffer(device)
    for build, status, reason in (
        (broken, "error", "RuntimeError: kernel exploded"),
        (missing, "unavailable", "no such kernel"),
    ):
        record = suite.measure_contestant(
            C.Contestant("x", "x", ("matrix",), build),
            matrix_workload(8),
            "fp32",
            device,
            suite.PLANS["quick"],
            flush,
        )
        assert record["status"] == status and record["reason"] == reason and "median_ms" not in record


def _record(contestant, ratio, pct=None, size="4096x4096", params=16_777_216, dtype="fp32", median=1.0):
    r = {
        "case": "matrix",
        "size": size,
        "dtype": dtype,
        "params": params,
        "contestant": contestant,
        "status": "ok",
        "median_ms": median,
        "ratio": ratio,
    }
    if pct is not None:
        r["pct_copy"] = pct
    return r


def test_targets_are_judged_on_the_worst_large_row():
    records = [
        _record("fg_adamw_triton", 0.95, 93.0),
        _record("fg_adamw_triton", 1.05, 91.0, size="8192x8192"),
        _record("fg_adamw_triton", 3.0, 10.0, size="64x64", params=4096),  # below 4M params: ignored
        _record("fg_gated_triton", 1.08, median=1.0),
        _record("fg_gated_ref", 6.0, median=6.0),
        {
            "case": "newton_schulz",
            "size": "4096x4096",
            "dtype": "bf16",
            "params": 4096**2,
            "contestant": "ns_triton",
            "status": "unavailable",
            "reason": "no kernel",
        },
    ]
    targets = {t["target"]: t for t in evaluate(records)}
    fp32 = [t for name, t in targets.items() if "(fp32" in name]
    time_target, bandwidth_target, gated_target, reference_target = fp32
    assert (
        time_target["status"] == "missed"
        and time_target["worst"] == 1.05
        and "8192x8192" in time_target["detail"]
    )
    assert bandwidth_target["status"] == "met" and bandwidth_target["worst"] == 91.0
    assert gated_target["status"] == "met" and reference_target["status"] == "met"
    assert reference_target["worst"] == pytest.approx(6.0)
    ns = [t for name, t in targets.items() if "Newton" in name][0]
    assert ns["status"] == "not measured" and ns["detail"] == "no kernel"
    assert all(t["status"] == "not measured" for name, t in targets.items() if "(bf16" in name)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cases", "nope"], "--cases: unknown nope"),
        (["--contestants", "nope"], "unknown contestant(s) nope"),
        (["--dtypes", "fp16"], "--dtypes: unknown fp16"),
        (["--sizes", "0"], "--sizes: sizes must be positive"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert cli_main(["bench", "--device", "cpu", "--quick", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusedgate bench: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_one_line(capsys):
    assert cli_main(["bench", "--device", "cuda", "--quick"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    assert cli_main(["bench", "--device", "cpu", "--quick", "--out", str(target)]) == 2
    assert "is not a folder" in capsys.readouterr().err and target.read_text() == "keep me"


def test_design_bytes_formula_is_independent_of_the_optimizer():
    """step_bytes against a hand count for a bf16 param with fp32 state (with a second moment: a spec whose
    poles give the Adam direction weight; without one at ω ≡ 1, where FusedGate keeps none)."""
    p = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.bfloat16))
    p.grad = torch.randn(3, 5, dtype=torch.bfloat16)
    optimizer = C.FusedGate([p], spec=GateSpec.adamw(), backend="reference")
    optimizer.step()
    assert C.step_bytes([p], optimizer) == 15 * (2 + 2 + 2 + 2 * (4 + 4))
    assert math.isclose(C.step_bytes([p], optimizer) / 15, 22)
    muon = C.FusedGate([p], spec=GateSpec.gated(), backend="reference")
    muon.step()
    assert C.step_bytes([p], muon) == 15 * (2 + 2 + 2 + 2 * 4)


def test_an_interrupted_run_never_replaces_a_complete_one(quick_run, tmp_path):
    _, out = quick_run
    complete = json.loads((out / "cpu.json").read_text())
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "cpu.json").write_text("complete")
    partial = dict(complete, results=complete["results"][:5])
    paths = report.write_all(partial, folder)
    assert sorted(p.name for p in paths) == ["cpu.partial.json", "cpu.partial.md", "cpu.partial.png"]
    assert (folder / "cpu.json").read_text() == "complete"
    assert f"Interrupted** after 5 of {complete['planned']}" in (folder / "cpu.partial.md").read_text()


def test_rerender_rewrites_md_and_png_from_the_json(quick_run, tmp_path, capsys):
    _, out = quick_run
    json_path = tmp_path / "cpu.json"
    json_path.write_text((out / "cpu.json").read_text())
    assert cli_main(["bench", "--rerender", str(json_path)]) == 0
    assert (tmp_path / "cpu.md").read_text() == (out / "cpu.md").read_text()
    assert (
        matplotlib.image.imread(tmp_path / "cpu.png").shape == matplotlib.image.imread(out / "cpu.png").shape
    )
    (tmp_path / "bad.json").write_text("{}")
    assert cli_main(["bench", "--rerender", str(tmp_path / "bad.json")]) == 2  # a usage error
    assert "not a fusedgate bench results JSON" in capsys.readouterr().err


def test_cpu_step_benchmark_runs_and_reports_ratios():
    """The CPU step-cost benchmark (a smoke run: its numbers are measured by hand, never asserted)."""
    from fusedgate.bench import cpu_step

    result = cpu_step.measure(depth=1, specs=("nanochat", "gated"), blocks=2, block=1, warmup=1)
    assert set(result["median_ms"]) == {"baseline", "fusedgate:nanochat", "fusedgate:gated"}
    assert result["ratio"]["baseline"] == 1.0 and all(v > 0 for v in result["median_ms"].values())


def _muon_record(contestant, size, ratio, status="ok"):
    return {"case": "nanochat_muon", "size": size, "dtype": "fp32", "params": 85_000_000,
            "contestant": contestant, "status": status, "median_ms": ratio, "ratio": ratio}


def test_the_nanochat_target_is_judged_on_the_worst_of_d12_and_d20():
    from fusedgate.bench.targets import nanochat_target

    records = [_muon_record("nanochat_compiled", "d12", 1.0), _muon_record("fg_nanochat_triton", "d12", 0.8),
               _muon_record("fg_nanochat_triton", "d20", 1.2), _muon_record("fg_nanochat_triton", "d1", 9.0)]
    target = nanochat_target(records)
    assert target["status"] == "missed" and target["worst"] == 1.2 and "d20" in target["detail"]
    assert target["goal"] == "≤ 1×" and target["measured"] == "1.2×"
    assert nanochat_target(records[:2])["status"] == "met"
    assert nanochat_target([])["status"] == "not measured"


def test_training_targets_compare_each_fusedgate_run_with_the_baseline():
    from fusedgate.bench.targets import training_targets

    runs = [{"label": "baseline", "tokens_per_s": 1000.0, "steps": 300},
            {"label": "fusedgate:nanochat", "tokens_per_s": 995.0, "steps": 300},
            {"label": "fusedgate:default", "tokens_per_s": 900.0, "steps": 300}]
    nanochat, default = training_targets(runs)
    assert nanochat["status"] == "met" and nanochat["worst"] == pytest.approx(0.995)
    assert default["status"] == "missed" and "900 vs 1,000 tokens/s" in default["detail"]
    assert all(t["status"] == "not measured" for t in training_targets(runs[1:]))


def test_the_compiled_baseline_opponent_is_the_baseline():
    """bench.compiled_step's fallback opponent (the baseline MuonAdamW with its updates compiled as nanochat
    compiles its own) takes the eager baseline's steps (≤ 1e-6 relative: inductor fuses and rounds)."""
    from fusedgate.bench.compiled_step import CompiledMuonAdamW
    from fusedgate.nanochat.muon import MuonAdamW

    results = []
    for cls in (MuonAdamW, CompiledMuonAdamW):
        gen = torch.Generator().manual_seed(0)
        matrices = [torch.nn.Parameter(torch.randn(8, 8, generator=gen)) for _ in range(2)]
        vector = torch.nn.Parameter(torch.randn(8, generator=gen))
        opt = cls([dict(kind="muon", params=matrices, lr=0.02, momentum=0.95, ns_steps=5, beta2=0.95,
                        weight_decay=0.1),
                   dict(kind="adamw", params=[vector], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.01)])
        for _ in range(3):
            for p in (*matrices, vector):
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        results.append([p.detach().clone() for p in (*matrices, vector)])
    for a, b in zip(*results):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-6


@pytest.mark.parametrize("world", [1, 2, 4])
def test_distributed_bytes_fsdp2_column(world):
    """The FSDP2 column (bytes sent per rank per step by design, the busiest rank) on a depth-1 nanochat GPT: 0 on
    one rank; else at least the ranks' mean of the two all-to-alls, 2·(N−1)/N²·P·4 B over the P gated elements,
    and at most 1/N of nanochat's DistMuonAdamW (which sends ≈ 2·(N−1)/N of every parameter)."""
    from fusedgate.bench import distributed_bytes as D

    sent = D.fsdp2_sent(1, 64, world, "nanochat")
    if world == 1:
        assert sent == 0
        return
    opt = C.FusedGate(D._groups(D._model(1, 64)), spec=GateSpec.nanochat())
    gated = sum(p.numel() for g in opt.param_groups for i, p in enumerate(g["params"]) if opt.is_gated(g, i, p))
    nanochat_sent = D.nanochat_bytes(D._groups(D._model(1, 64)), world)[1]
    assert 2 * (world - 1) / world**2 * gated * 4 <= sent <= nanochat_sent / world

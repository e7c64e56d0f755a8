"""FusedGate on FSDP2 (fully_shard, DTensor parameters; gloo, CPU, 2 and 3 processes): against a single process
over the concatenated batch, bit for bit against the shard average on 2 ranks, a DCP checkpoint saved on 2
ranks resumed on 3 and on 1, the one-line refusals, the bytes sent by design, and backend='triton' (Triton's
interpreter) against the reference step by step.

The multi-process runs happen once per module (``runs``: three spawns); the tests read their results. See
``fsdp_worker`` for the model (dim 0 of 7 and 2 rows: uneven on 2 and 3 ranks, an empty shard on 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fsdp_worker as W
import pytest
import torch
from conftest import assert_ranks_identical, needs_single_rounding_fma, worst

from fusedgate import fsdp
from fusedgate.distributed import state_bytes
from fusedgate.optimizer import FusedGate

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fsdp")
    two = W.spawn(2, out)   # saves the DCP checkpoint dcp_world2 that the 3- and 1-process runs resume
    return {"out": out, 2: two, 3: W.spawn(3, out, load_from=out / "dcp_world2"),
            1: W.spawn(1, out, load_from=out / "dcp_world2")}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("preset", W.PRESETS)
def test_fsdp2_equals_single_process_over_the_whole_batch(runs, world, preset):
    key = f"fsdp2/{preset}"
    assert_ranks_identical(runs[world], key)
    assert worst(runs[world][0][key], W.single_process(preset)) <= TOLERANCE


@pytest.mark.parametrize("preset", W.PRESETS)
def test_two_ranks_bit_identical_to_the_shard_average(runs, preset):
    """On 2 ranks FSDP2's reduce-scatter forms (g₀ + g₁)/2 exactly as one process averaging the two shards'
    gradients: the sharded step (local element-wise passes, whole matrices orthogonalised by their owner,
    all-reduced sensor sums) must then give the single-process parameters bit for bit."""
    assert worst(runs[2][0][f"fsdp2/{preset}"], W.single_process(preset, shards=2)) == 0.0


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("loaded", [3, 1])
def test_dcp_checkpoint_from_two_ranks_resumes_at_another_world_size(runs, loaded, flat):
    """Saved with torch.distributed.checkpoint at step 10 on 2 ranks (get_optimizer_state_dict; ``flat``:
    flatten_optimizer_state_dict, as torchtitan saves), loaded into a differently initialised model on 3 ranks
    and on 1 (set_optimizer_state_dict), trained to step 20: the uninterrupted 2-rank run's parameters, up to
    the rounding of the rank count."""
    key = "resumed_flat" if flat else "resumed"
    for result in runs[loaded]:   # the loss EMAs and the step count, from the checkpoint
        assert torch.equal(result["loaded_global_flat" if flat else "loaded_global"], runs[2][0]["saved_global"])
    assert_ranks_identical(runs[loaded], key)
    assert worst(runs[loaded][0][key], runs[2][0]["fsdp2/gated"]) <= TOLERANCE


def test_whole_state_dicts_from_two_ranks_resume_in_a_plain_single_process(runs):
    """get_optimizer_state_dict(full_state_dict=True) on the FSDP2 run, saved by rank 0 with torch.save and loaded
    with set_optimizer_state_dict into a plain (unsharded) model and FusedGate: the uninterrupted run."""
    resumed = W.resume_whole(runs["out"] / "dcp_world2.pt")
    assert worst(resumed, runs[2][0]["fsdp2/gated"]) <= TOLERANCE


def test_whole_state_dicts_load_into_fsdp2_on_three_ranks(runs):
    """The same whole state dicts, read by every rank of a 3-rank FSDP2 run and given to
    ``FusedGate.load_state_dict`` as they are: the whole moments become DTensors of the parameters' placement."""
    assert_ranks_identical(runs[3], "resumed_whole")
    assert worst(runs[3][0]["resumed_whole"], runs[2][0]["fsdp2/gated"]) <= TOLERANCE


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("preset", W.PRESETS)
def test_fsdp2_state_is_sharded_with_the_parameters(runs, world, preset):
    """The moments are DTensors of the parameters' placement: the ranks' state bytes sum to the single
    process's, plus the per-matrix state (sensors, step counts, NorMuon moments) each rank repeats."""
    model = W.Net()
    opt = W.make_optimizer(model, preset)
    W.train(model, opt, 0, 1)
    moments = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items()
                  if k in ("exp_avg", "exp_avg_sq"))
    repeated = state_bytes(opt) - moments
    per_rank = [result[f"state_bytes/{preset}"] for result in runs[world]]
    assert sum(per_rank) == moments + world * repeated


def test_wrong_setups_get_one_line_errors(runs):
    for world in (2, 3):
        refusals = runs[world][0]["refusals"]
        assert "FSDP2 (DTensor) and 1 plain parameters" in refusals["mixed"]
        assert "sharded on dim 0 over a 1-D mesh" in refusals["replicate"] and "Replicate()" in refusals["replicate"]
        assert "distributed='zero2' takes plain parameters" in refusals["zero2"]
        for result in runs[world]:
            assert "distributed='fsdp2'" in result["refusals"]["loss_on_some_ranks"]
            assert "step() gets a loss on rank 0 and none on rank 1" in result["refusals"]["loss_on_some_ranks"]
        assert all("\n" not in message for message in refusals.values())


@pytest.mark.parametrize("world", [2, 3])
def test_a_non_finite_shard_skips_the_whole_matrix_on_every_rank(runs, world):
    for result in runs[world]:
        assert result["nonfinite"] == {"skipped": 1, "unchanged": True, "others_stepped": True}


def spawn_interpreted(world: int, out: Path, job: str) -> list[dict]:
    """``fsdp_worker.spawn(world, out, job=job)`` in a fresh Python with TRITON_INTERPRET=1 (the variable is read
    when Triton is imported); the ranks' results."""
    probe = ("import os; os.environ['TRITON_INTERPRET'] = '1'; import sys; sys.path.insert(0, sys.argv[1]); "
             "import fsdp_worker as W; from pathlib import Path; "
             f"W.spawn({world}, Path(sys.argv[2]), job={job!r})")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", probe, str(Path(__file__).parent), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}_of_{world}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """The Triton-backend jobs on 2 and 3 gloo ranks under Triton's interpreter (skipped with CUDA: the
    interpreter is chosen only without a CUDA device)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the interpreter is chosen only without a CUDA device")
    out = tmp_path_factory.mktemp("fsdp_triton")
    return {"shards": spawn_interpreted(2, out, "triton"),
            **{world: spawn_interpreted(world, out, "triton_forced") for world in (2, 3)}}


def test_triton_backend_steps_the_local_shards(interpreted):
    """backend='triton' on 2 FSDP2 ranks, 3 free-running steps of the gated spec (AdamW and the gated matrices
    on the kernels): the reference backend's parameters to 1e-6."""
    assert max(r["triton"] for r in interpreted["shards"]) <= TOLERANCE


@needs_single_rounding_fma()
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("preset", W.PRESETS[1:])
def test_triton_gated_shards_match_the_reference_step_by_step(interpreted, world, preset):
    """backend='triton' against backend='reference' on FSDP2 twins, teacher-forced (both step from the
    reference's parameters and state): every step's parameters and state (moments, sensors, step counts,
    decay products, NorMuon moments) on every rank's rows within 1e-6 — on matrices of 7 rows (4 + 3 on 2 ranks,
    3 + 3 + 1 on 3) and the 2-row head (an empty shard on 3 ranks). The Triton optimizer built one FSDP2
    launch table per gated same-shape run: the gated matrices went through the kernels, not the torch path."""
    for result in interpreted[world]:
        worst = result[preset]
        assert worst["params"] <= TOLERANCE and worst["state"] <= TOLERANCE, worst
        assert len(worst["layouts"]) == worst["gated_runs"] == 4, worst


@pytest.mark.parametrize("world", [2, 3])
def test_a_non_finite_shard_skips_the_whole_matrix_on_the_kernels_too(interpreted, world):
    """backend='triton': the NaN on the last rank reaches every rank's gate through the flags' all-reduce."""
    for result in interpreted[world]:
        assert result["nonfinite"] == {"skipped": 1, "unchanged": True, "others_stepped": True}


def test_interleave_launches_every_run_s_next_collective_in_turn():
    """Each run's collective is in flight while another run computes: launches alternate run by run within the
    window, a finished run's place goes to the next, the results come back in run order."""
    events = []

    def run(name, collectives):
        for c in range(collectives):
            events.append(f"{name}{c}")
            yield
        return name

    calls = [("a", 3), ("b", 1), ("c", 2)]
    assert fsdp.interleave(run, calls, window=3) == ["a", "b", "c"]
    assert events == ["a0", "b0", "c0", "a1", "c1", "a2"]
    events.clear()   # two at a time (the default): c starts when b is done
    assert fsdp.interleave(run, calls) == ["a", "b", "c"]
    assert events == ["a0", "b0", "a1", "a2", "c0", "c1"]
    events.clear()   # one at a time: the sequential order
    assert fsdp.interleave(run, calls, window=1) == ["a", "b", "c"]
    assert events == ["a0", "a1", "a2", "b0", "c0", "c1"]


def test_fsdp2_mode_without_dtensors_is_refused_in_one_line():
    with pytest.raises(TypeError, match="distributed='fsdp2' takes DTensor parameters"):
        FusedGate(torch.nn.Linear(3, 2).parameters(), distributed="fsdp2")


@pytest.mark.parametrize("rows, world", [(7, 2), (7, 3), (2, 3), (9, 3), (1, 2)])
def test_shards_split_rows_as_torch_chunk(rows, world):
    chunks = [len(c) for c in torch.arange(rows).chunk(world)]
    expected = chunks + [0] * (world - len(chunks))
    shards = fsdp.Shards(rows, 5, world)
    assert list(shards.counts) == expected
    assert list(shards.offsets) == [sum(expected[:r]) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("preset", W.PRESETS)
def test_bytes_per_step_by_design(runs, world, preset):
    """What each rank reported is the formula of ``fusedgate.fsdp``'s docstring: over the ranks, the two
    all-to-alls move every gated matrix's rows except its owner's, twice (there and back), plus (N − 1)
    NorMuon moments per matrix; each rank adds the ring all-reduces of the loss and of the (K, 7) sums."""
    opt = W.make_optimizer(W.Net(), preset)
    gated = [p for g in opt.param_groups for i, p in enumerate(g["params"]) if opt.is_gated(g, i, p)]
    ring = 2 * (world - 1) / world
    per_rank_small = ring * 4 + ring * len(gated) * (7 if opt.reads_sensors else 1) * 4
    exchanged, start = 0.0, 0   # matrix j of the step (over the groups' same-shape runs) → rank j mod N
    for group in opt.param_groups if preset != "adamw" else []:
        runs_of = {}
        for i, p in enumerate(group["params"]):
            if opt.is_gated(group, i, p):
                runs_of.setdefault(tuple(p.shape), []).append(p)
        for params in runs_of.values():
            for i, p in enumerate(params):
                rows, cols = p.shape
                owner_rows = fsdp.Shards(rows, cols, world).counts[(start + i) % world]
                normuon = (world - 1) * (rows if rows >= cols else cols) if opt.spec.normuon else 0
                exchanged += (2 * (p.numel() - owner_rows * cols) + normuon) * 4
            start = (start + len(params)) % world
    reported = [result[f"traffic/{preset}"] for result in runs[world]]
    assert sum(reported) == pytest.approx(world * per_rank_small + exchanged, abs=world)

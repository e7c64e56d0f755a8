"""FusedGate on torch.distributed (gloo, CPU, 2 and 3 processes): ZeRO-2 and DDP ('replicated') runs against
a single process over the concatenated batch, sharded state, checkpoints across world sizes, refusals.

The multi-process runs happen once per module (``runs``: three spawns, each rank trains every case);
the tests read their results. See ``dist_worker`` for the model (stacks of 5 and 2 matrices: uneven on
2 and 3 ranks) and for why the Muon presets train at lr 5e-4 here."""

from __future__ import annotations

import dist_worker as W
import pytest
import torch
from conftest import assert_ranks_identical, worst

from fusedgate.distributed import state_bytes
from fusedgate.optimizer import FusedGate

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)   # module fixtures run before conftest's per-test thread setting
    out = tmp_path_factory.mktemp("distributed")
    two = W.spawn(2, out)
    three = W.spawn(3, out, load_from=[out / "ckpt_world2.pt"])
    return {"out": out, 2: two, 3: three}


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    return {preset: W.single_process(preset) for preset in W.PRESETS}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("preset", W.PRESETS)
def test_zero2_equals_single_process_over_the_whole_batch(runs, single, world, preset):
    key = f"zero2/{preset}"
    assert_ranks_identical(runs[world], key)
    assert worst(runs[world][0][key], single[preset]) <= TOLERANCE


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("preset", W.PRESETS)
def test_ddp_replicated_ranks_stay_identical_with_their_own_losses(runs, single, world, preset):
    """The issue's drift case (DDP + the gated default, every rank passing its own loss), and the presets."""
    assert_ranks_identical(runs[world], f"ddp/{preset}")
    assert worst(runs[world][0][f"ddp/{preset}"], single[preset]) <= TOLERANCE


@pytest.mark.parametrize("preset", W.PRESETS)
def test_two_ranks_bit_identical_to_the_shard_average(runs, preset):
    """On 2 ranks the all-reduce computes (g₀ + g₁)/2 exactly as one process summing the two shards'
    gradients does; the sharded update must then be the single-process update bit for bit."""
    reference = W.single_process(preset, shards=2)
    assert worst(runs[2][0][f"zero2/{preset}"], reference) == 0.0
    assert worst(runs[2][0][f"ddp/{preset}"], reference) == 0.0


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("preset", W.PRESETS)
def test_zero2_state_is_partitioned_across_ranks(runs, world, preset):
    """Each state element lives on exactly one rank (the embedding's moments split element-wise, the other
    parameters' state with their owner; only 0-d step counters are repeated): the ranks' elements sum to
    the single process's, and no rank holds more than 1/N + 15 % of it on this small model."""
    model = W.Net()
    opt = W.make_optimizer(model, preset, "auto")
    W.train(model, opt, 0, 1)
    whole = W.state_elements(opt)
    per_rank = [result[f"state_elements/{preset}"] for result in runs[world]]
    assert sum(per_rank) == whole
    assert all(result[f"deepcopy/{preset}"] for result in runs[world])   # no Work or group held between steps
    assert max(per_rank) <= (1 / world + 0.15) * whole
    assert max(result[f"state_bytes/{preset}"] for result in runs[world]) < 0.7 * state_bytes(opt)


def test_checkpoint_resumes_at_the_same_world_size_exactly(runs):
    for world in (2, 3):
        for rank in range(world):
            resumed = runs[world][rank][f"resumed/ckpt_world{world}.pt"]
            assert worst(resumed, runs[world][rank]["zero2/gated"]) == 0.0


@pytest.mark.parametrize("saved, loaded", [(2, 1), (3, 1), (2, 3), (3, 2)])
def test_checkpoint_resumes_at_another_world_size(runs, saved, loaded):
    uninterrupted = runs[saved][0]["zero2/gated"]
    path = runs["out"] / f"ckpt_world{saved}.pt"
    if loaded == 1:
        resumed = [W.load_and_continue(path, "gated")]
    elif saved == 2:
        assert_ranks_identical(runs[3], f"resumed/{path.name}")
        resumed = [result[f"resumed/{path.name}"] for result in runs[3]]
    else:   # on ranks 0 and 1 of the 3-rank run, as a 2-rank process group
        assert_ranks_identical(runs[3][:2], "resumed on 2 of 3")
        resumed = [result["resumed on 2 of 3"] for result in runs[3][:2]]
    assert worst(resumed[0], uninterrupted) <= TOLERANCE


def test_checkpoint_saved_by_zero2_is_the_single_process_format(runs):
    ckpt = torch.load(runs["out"] / "ckpt_world3.pt", weights_only=False)
    model = W.Net()
    opt = W.make_optimizer(model, "gated", "auto")
    W.train(model, opt, 0, W.SAVE_AT)
    ours, theirs = ckpt["optimizer"], opt.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for pid, state in theirs["state"].items():
        assert ours["state"][pid].keys() == state.keys()
        for name, value in state.items():
            assert ours["state"][pid][name].shape == value.shape, (pid, name)


def test_wrong_setups_get_one_line_errors_before_any_state(runs):
    for result in runs[2]:
        assert "whether step() gets a loss" in result["refusals"]["loss_on_some_ranks"]
        assert "use distributed='replicated'" in result["refusals"]["zero2_under_ddp"]
    refusals = runs[2][0]["refusals"]
    assert "wrap the model in DistributedDataParallel" in refusals["replicated_without_ddp"]
    assert refusals["replicated_without_ddp_state"] == "0"
    assert "DTensor" in refusals["fsdp2"] and "distributed='zero2'" in refusals["fsdp2"]
    assert all("\n" not in message for message in refusals.values())


@pytest.mark.parametrize("world", [2, 3])
def test_auto_decides_at_the_first_step_and_matches_the_explicit_modes_bit_for_bit(runs, world):
    """distributed='auto' (no argument added): without DDP it runs zero2, under DDP replicated, and gives
    exactly the explicit mode's parameters."""
    for result in runs[world]:
        for preset in W.PRESETS:
            assert result[f"auto_mode/{preset}"] == "zero2" and result[f"ddp_auto_mode/{preset}"] == "replicated"
            for name, value in result[f"zero2/{preset}"].items():
                assert torch.equal(result[f"auto/{preset}"][name], value), (preset, name)
            for name, value in result[f"ddp/{preset}"].items():
                assert torch.equal(result[f"ddp_auto/{preset}"][name], value), (preset, name)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_that_disagree_are_refused_on_every_rank_naming_the_first_mismatch(runs, world):
    last = world - 1
    expected = {
        "extra_param": f"rank 0 has 15 parameters, rank {last} has 16",
        "extra_param_auto": f"rank 0 has 15 parameters, rank {last} has 16",
        "other_shape": "parameter #3 is layers.1.weight (8, 8) torch.float32 on rank 0 but swapped (2, 7) "
                       "torch.float32 on rank 1",
        "missing_grad": "parameter #12 (up_b.weight) has a gradient on rank 0 and none on rank 1",
        "missing_grad_auto": "parameter #12 (up_b.weight) has a gradient on rank 0 and none on rank 1",
    }
    for result in runs[world]:
        for case, fragment in expected.items():
            message = result["refusals"][case]
            assert fragment in message and "\n" not in message, (case, message)
            assert result["refusals"][f"{case}_state"] == "0"


def test_single_process_modes():
    with pytest.raises(ValueError, match="distributed='sharded' is not one of"):
        FusedGate(W.Net().parameters(), distributed="sharded")
    # without a process group every mode is the single-process optimizer
    results = []
    for mode in ("auto", "replicated", "zero2"):
        model = W.Net()
        opt = W.make_optimizer(model, "gated", mode)
        W.train(model, opt, 0, 3)
        results.append(W.params_of(model))
    assert worst(results[1], results[0]) == 0.0 and worst(results[2], results[0]) == 0.0

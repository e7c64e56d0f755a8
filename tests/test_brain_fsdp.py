"""OptBrain over FSDP2-sharded parameters (``fusedgate.brain.sharded_features``; gloo, 3 CPU processes, the
7-row matrices split 3, 3, 1 and the 2-row head 1, 1, 0): the features are the whole parameters' on every
rank, so the ranks decide the same knobs, stay identical, and follow one process over the whole batch."""

from __future__ import annotations

import brain_fsdp_worker as W
import numpy as np
import pytest
import torch
from conftest import assert_ranks_identical

WORLD = 3
NEUTRAL = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    torch.set_num_threads(1)
    return W.spawn(WORLD, tmp_path_factory.mktemp("brain_fsdp"))


@pytest.fixture(scope="module")
def one_process():
    torch.set_num_threads(1)
    return {base: W.brain_run(base) for base in ("adamw", "fusedgate")}


def test_sharded_features_match_the_whole_parameters_teacher_forced(ranks):
    """Per window, every rank's losses (averaged), features and running norms are the unsharded ones of the
    gathered parameters and gradients, to float32 rounding of sums in another order (atol 1e-6 on values of
    order 1; the losses are float64 means of float32 losses)."""
    for rank in ranks:
        run = rank["features"]
        assert len(run["features"]) == 4
        for (sharded, whole), (loss, whole_loss) in zip(run["features"], run["losses"]):
            np.testing.assert_allclose(sharded, whole, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(loss, whole_loss, rtol=1e-6, atol=0)
        for sharded, whole in run["ema"]:
            torch.testing.assert_close(sharded, whole, rtol=1e-6, atol=1e-7)


def test_the_clip_scales_each_rank_rows_by_the_whole_groups_factor(ranks):
    run = ranks[0]["features"]
    assert max(float(x) for x in run["clipped"]) < 1e-7   # the gathered clipped gradients, against the whole
    assert min(run["shrunk"]) < 0.5 and max(run["shrunk"]) <= 1.0   # and the clip did cut the matrices'


@pytest.mark.parametrize("base", ["adamw", "fusedgate"])
def test_ranks_decide_alike_and_follow_one_process_over_the_whole_batch(ranks, one_process, base):
    """Bit-identical across the ranks; against one process, the knobs to 1e-3 relative (the policy amplifies
    the reductions' rounding) and the parameters to 1e-5 (FusedGate's own FSDP2 path rounds its sums too)."""
    assert_ranks_identical([r[base] for r in ranks], "params")
    assert_ranks_identical([r[base] for r in ranks], "policy")
    assert all(torch.equal(r[base]["knobs"], ranks[0][base]["knobs"]) for r in ranks)
    run, alone = ranks[0][base], one_process[base]
    assert run["report"]["cycles"] == alone["report"]["cycles"] >= 2
    assert (run["knobs"] - NEUTRAL).abs().max() > 0.5                 # it did move the knobs
    torch.testing.assert_close(run["knobs"], alone["knobs"], rtol=1e-3, atol=1e-5)
    for name, p in alone["params"].items():
        torch.testing.assert_close(run["params"][name], p, rtol=0, atol=1e-5, msg=name)


def test_every_knob_acts_on_the_shards(ranks):
    knobs = ranks[0]["adamw"]["knobs"]
    assert knobs[..., 0].min() < 1 < knobs[..., 0].max() and knobs[..., 1].min() < 1 and knobs[..., 2].max() > 0


def assert_same_run(resumed: dict, straight: dict) -> None:
    """A resumed run equals the straight one bit for bit: report, policy and every whole parameter."""
    assert resumed["report"] == straight["report"]
    assert torch.equal(resumed["policy"]["b"], straight["policy"]["b"])
    for name, p in straight["params"].items():
        assert torch.equal(resumed["params"][name], p), name


def test_a_rank_resumes_from_its_own_checkpoint_bit_identically(ranks):
    """Saved mid-window with dampen buffers (each rank's rows) in two groups, loaded into fresh objects."""
    for rank in ranks:
        assert rank["resumed"]["damped_at_save"].tolist() == [False, True, True]
        assert_same_run(rank["resumed"], rank["adamw"])


def test_a_run_resumes_through_torch_distributed_checkpoint_bit_identically(ranks):
    """The default brain (no dampen) saved mid-window with DCP beside the model and AdamW, loaded into fresh
    objects on every rank."""
    for rank in ranks:
        assert_same_run(rank["resumed_dcp"]["resumed"], rank["resumed_dcp"]["straight"])


@pytest.mark.parametrize("case, start", [
    ("own", "sync_ranks=False cannot hold over FSDP2 parameters"),
    ("mixed", "OptBrain got FSDP2 (DTensor) and 7 plain parameters"),
    ("hybrid", "OptBrain takes DTensor parameters sharded on dim 0 over a 1-D mesh"),
])
def test_what_cannot_hold_over_shards_is_refused_in_one_line(ranks, case, start):
    message = ranks[0]["refusals"][case]
    assert message.startswith(start) and "\n" not in message

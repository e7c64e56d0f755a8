"""OptBrain on several ranks (gloo, CPU, 2 processes): every rank passes its own loss, and the brain averages
what it learns from over the ranks (``TorchFeatures.average_over``: the window's losses and what was sensed,
one all-reduce each per window; a guarded step's loss), so the ranks decide the same knobs and their
parameters stay identical — under DDP, and over FusedGate's ZeRO-2, whose gradients are each rank's own
until its step averages them. ``sync_ranks=False`` is the control: each rank its own brain, and they part."""

from __future__ import annotations

import dist_worker as W
import pytest
import torch
from conftest import assert_ranks_identical


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    torch.set_num_threads(1)
    return W.spawn_brain(2, tmp_path_factory.mktemp("brain_distributed"))


@pytest.mark.parametrize("base", ["ddp", "zero2"])
def test_ranks_with_their_own_losses_decide_alike_and_stay_identical(ranks, base):
    run = [r[f"{base}/synced"] for r in ranks]
    assert_ranks_identical(run, "params")
    assert_ranks_identical(run, "policy")
    assert run[0]["report"] == run[1]["report"]
    report = run[0]["report"]
    assert report["cycles"] >= 2 and report["warmdown"]["status"] != "waiting"   # it learnt, and reached the test
    assert torch.count_nonzero(run[0]["policy"]["b"]) > 0


@pytest.mark.parametrize("base", ["ddp", "zero2"])
def test_without_the_average_each_rank_learns_from_its_own_loss_and_they_part(ranks, base):
    """Under DDP the parameters part; over ZeRO-2 they stay equal (each rank updates its shard, then all
    gather it) but each shard follows its own rank's knobs: a policy no rank chose."""
    run = [r[f"{base}/own"] for r in ranks]
    assert not torch.equal(run[0]["policy"]["b"], run[1]["policy"]["b"])
    parted = any(not torch.equal(p, run[1]["params"][name]) for name, p in run[0]["params"].items())
    assert parted == (base == "ddp")


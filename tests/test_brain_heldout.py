"""The held-out task family: real problems, each a pure function of its seed, with every optimizer."""

import math

import pytest
import torch

from fusedgate.brain.heldout import HELDOUT_SEED_OFFSET, HELDOUT_TASKS, LR, PEAK, images
from fusedgate.brain.tasks import BUILDERS, FAMILIES, OPTIMIZERS, Arm, family_of, run_arm


def test_the_families_are_disjoint_and_complete():
    assert set(FAMILIES["heldout"]) == set(HELDOUT_TASKS) and not set(FAMILIES["tuning"]) & set(HELDOUT_TASKS)
    assert {family_of(t) for t in HELDOUT_TASKS} == {"heldout"}
    assert set(LR) == set(PEAK) == {(t, o) for t in HELDOUT_TASKS for o in OPTIMIZERS}
    assert HELDOUT_SEED_OFFSET >= 1000        # no eval seed of this family is a tuning or sweep seed


@pytest.mark.parametrize("task", HELDOUT_TASKS)
def test_a_task_is_a_pure_function_of_its_seed_and_trains(task):
    a, b, c = (BUILDERS[task](s) for s in (0, 0, 1))
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.model.parameters(), c.model.parameters()))
    assert a.loss_at(3).item() == b.loss_at(3).item() != a.loss_at(4).item()
    for opt in OPTIMIZERS:
        first = run_arm(task, opt, 0, Arm(), steps=2)["final"]
        trained = run_arm(task, opt, 0, Arm(), steps=20)
        assert math.isfinite(trained["final"]) and trained["final"] < first, (task, opt)


def test_the_generated_images_depend_on_the_class():
    x, y = images(0, 600)
    assert x.shape == (600, 1, 12, 12) and set(y.tolist()) == set(range(6))
    means = torch.stack([x[y == k].mean(0) for k in range(6)])
    assert (means[0] - means[1]).abs().mean() > 0.1            # the prototypes differ through the noise

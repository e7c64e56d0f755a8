"""BrainConfig: the learner's knobs in one frozen dataclass, each checked with a one-line error."""

import dataclasses

import pytest

from fusedgate import OptBrain
from fusedgate.brain import BrainConfig, BrainError
from fusedgate.brain.policy import BrainCore


def test_one_config_reaches_every_mode_and_the_core():
    config = BrainConfig(window=5, seed=3, explore=0.5)
    numpy_brain = OptBrain(None, n_groups=2, config=config)
    assert numpy_brain.config == config and numpy_brain.core.config == config
    assert OptBrain(None, n_groups=2, window=5, seed=3, explore=0.5).config == config   # keywords, same thing
    assert BrainCore(2, config).config == config == BrainCore(2, window=5, seed=3, explore=0.5).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = 7


@pytest.mark.parametrize("field, value, match", [
    ("window", 2, r"window=2: expected an integer in \[3, 100000\]"),
    ("window", True, "window=True"),
    ("total_steps", -100, r"total_steps=-100: expected an integer in \[0,"),
    ("explore", float("inf"), r"explore=inf: expected a finite number in \[0, 10\]"),
    ("alpha_min", 0.9, "alpha_min=0.9 is above alpha_start=0.125"),
    ("z_grow", float("nan"), "z_grow=nan"),
    ("sigma", (0.1, 0.2), "sigma=.*three numbers"),
])
def test_bad_knobs_are_one_line_errors(field, value, match):
    with pytest.raises(BrainError, match=match) as info:
        BrainConfig(**{field: value})
    assert "\n" not in str(info.value)


def test_unknown_knobs_are_refused_by_name():
    with pytest.raises(BrainError, match="unknown OptBrain argument.*mean_kontrol"):
        OptBrain(None, n_groups=1, mean_kontrol=True)
    assert BrainConfig.from_kwargs(total_steps=None).total_steps == 0      # None: unknown

"""OptBrain: a tiny online learner that sets three knobs per parameter group of any optimizer.

config.py         ``BrainConfig``: the learner's knobs, one frozen dataclass (and ``BrainError``)
optbrain.py       ``OptBrain``: the shared face; ``OptBrain(base)`` returns the mode that fits the base
torch_brain.py    ``TorchBrain`` (any torch optimizer) and ``FusedGateBrain`` (knobs via FusedGate's gate keys)
numpy_brain.py    ``NumpyBrain``: any framework, the caller applies the knobs
policy.py         the learner ``BrainCore``: observations -> knobs, antithetic exploration (pure numpy)
safety.py         ``TrustGate``: the trust α, grown only on a passed paired test; the bound it gives
warmdown.py       ``WarmdownTest``: over a run's last quarter, a warmdown taken only on a passed paired test
features.py       the seven per-group features in numpy (numpy mode, and the tests' reference)
torch_features.py the same features on the parameters' device, one host sync per window
state_io.py       save/load as plain arrays (.npz without pickle, or tensors in a state dict), range-checked
tasks.py          small real training problems for the evaluation (the tuning family)
heldout.py        the held-out family: problems the defaults were never tuned on
scenarios.py      the evaluation's scenarios: tuned, perturbation floor, mis-set lr, schedule, clipping, FusedGate
eval.py           ``fusedgate brain-eval``
"""

from fusedgate.brain.config import BrainConfig, BrainError
from fusedgate.brain.optbrain import OptBrain
from fusedgate.brain.policy import KNOBS

__all__ = ["KNOBS", "BrainConfig", "BrainError", "OptBrain"]

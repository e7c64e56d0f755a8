"""OptBrain: a tiny online learner that sets three knobs per parameter group of any optimizer.

optbrain.py       ``OptBrain``: the torch wrapper (and FusedGate actuator driver) and numpy mode
policy.py         the learner: observations -> knobs, antithetic exploration, guardrail (pure numpy)
sensors.py        the per-group features in numpy (numpy mode, and the tests' reference)
torch_sensors.py  the same features on the parameters' device, one host sync per window
state_io.py       save/load as plain arrays (.npz without pickle, or tensors in a state dict)
tasks.py          small real training problems for the evaluation
scenarios.py      the evaluation's scenarios: tuned, mis-set lr, schedule, clipping, FusedGate
eval.py           ``fusedgate brain-eval``
"""

from fusedgate.brain.optbrain import KNOBS, BrainError, OptBrain

__all__ = ["KNOBS", "BrainError", "OptBrain"]

"""fusedgate: a training-phase-aware optimizer.

    from fusedgate import FusedGate, GateSpec
    opt = FusedGate(model.named_parameters(), spec=GateSpec.default(), total_steps=1000)
    loss.backward(); opt.step(loss=loss.detach()); opt.zero_grad()
"""

__version__ = "0.1.0"

from fusedgate.spec import GateSpec, Pole, SpecError  # noqa: E402

__all__ = ["FusedGate", "GateSpec", "OptBrain", "Pole", "SpecError", "__version__"]


def __getattr__(name):
    # Lazy so that `fusedgate --version` and spec handling never import torch.
    if name == "FusedGate":
        from fusedgate.optimizer import FusedGate

        return FusedGate
    if name == "OptBrain":
        from fusedgate.brain import OptBrain

        return OptBrain
    raise AttributeError(f"module 'fusedgate' has no attribute {name!r}")

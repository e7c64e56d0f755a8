"""nanochat's Muon step compiled the way nanochat compiles it: the benchmark's reference for ``nanochat()``.

nanochat (``nanochat/optim.py``) runs each stack of same-shape matrices through one function decorated with
``torch.compile(dynamic=False, fullgraph=True)`` — momentum, Polar Express, NorMuon and the cautious update in
one graph — with the hyperparameters passed as 0-D CPU tensors so that a schedule changing them never
recompiles; the stacking and the copy back into the params stay outside the graph. The project's
re-implementation of that optimizer (``fusedgate.nanochat.muon.MuonAdamW``) has no compiled variant, so this
module compiles its per-stack math (``muon_direction`` and the cautious update of ``MuonAdamW._muon``) in
exactly that way. Only Muon groups: the benchmark steps a model's matrix params.

On the CPU the function is traced by dynamo with ``backend="eager"`` (the full-graph trace is checked, no
inductor code is generated): CPU runs are smoke runs, and a C++ build per shape would take minutes.
"""

from __future__ import annotations

import math

import torch

from fusedgate.nanochat.muon import muon_direction

RECOMPILE_LIMIT = 64  # one compiled graph per stack shape and dtype: d12, d20 and d26 hold 3 shapes each


def muon_stack_update(grads, params, momentum_buffer, second_moment, momentum_t, lr_t, wd_t, beta2_t,
                      ns_steps: int) -> None:
    """One Muon step of a stack (K, r, c), in place: ``MuonAdamW._muon`` between the stacking and the copy
    back. ``lr_t`` already carries the shape factor sqrt(max(1, r/c))."""
    direction = muon_direction(grads.float(), momentum_buffer, second_moment, momentum_t, beta2_t, ns_steps)
    direction = direction.to(params.dtype)
    cautious = (direction * params >= 0).to(params.dtype)
    params.sub_(lr_t * direction + lr_t * wd_t * params * cautious)


def compile_stack_update(device: torch.device):
    """``muon_stack_update`` compiled as nanochat compiles its fused steps (see the module docstring)."""
    limit = getattr(torch._dynamo.config, "recompile_limit", None)
    if limit is not None and limit < RECOMPILE_LIMIT:  # past the limit dynamo would silently run eager
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    backend = "inductor" if device.type == "cuda" else "eager"
    return torch.compile(muon_stack_update, dynamic=False, fullgraph=True, backend=backend)


class CompiledMuon(torch.optim.Optimizer):
    """nanochat's single-device Muon for ``kind='muon'`` groups (lr, momentum, ns_steps, beta2,
    weight_decay; params of one shape), one compiled call per group and step."""

    def __init__(self, param_groups: list[dict]):
        for group in param_groups:
            if group.get("kind") != "muon" or len({tuple(p.shape) for p in group["params"]}) != 1:
                raise ValueError("CompiledMuon takes kind='muon' groups of params that share one shape")
        super().__init__(param_groups, defaults={})
        device = self.param_groups[0]["params"][0].device
        self._update = compile_stack_update(device)
        self._scalars = {name: torch.tensor(0.0, dtype=torch.float32) for name in ("momentum", "lr", "wd", "beta2")}

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """``loss`` is accepted and ignored, as by ``MuonAdamW``."""
        for group in self.param_groups:
            self._step_group(group)

    def _step_group(self, group: dict) -> None:
        params = group["params"]
        rows, cols = params[0].shape
        state = self.state[params[0]]
        if not state:
            moment_shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            state["momentum_buffer"] = torch.zeros(len(params), rows, cols, device=params[0].device)
            state["second_momentum_buffer"] = torch.zeros(moment_shape, device=params[0].device)
        s = self._scalars
        s["momentum"].fill_(group["momentum"])
        s["lr"].fill_(group["lr"] * math.sqrt(max(1.0, rows / cols)))
        s["wd"].fill_(group["weight_decay"])
        s["beta2"].fill_(group["beta2"])
        stacked = torch.stack(params)
        self._update(torch.stack([p.grad for p in params]), stacked, state["momentum_buffer"],
                     state["second_momentum_buffer"], s["momentum"], s["lr"], s["wd"], s["beta2"],
                     int(group["ns_steps"]))
        torch._foreach_copy_(params, list(stacked.unbind(0)))

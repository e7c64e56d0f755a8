"""Processes for the OptBrain-on-FSDP2 tests (gloo, CPU): ``fsdp_worker.Net`` under ``fully_shard`` (7-row
matrices split unevenly, a 2-row head with an empty shard on 3 ranks), every rank training on its slice of
the same global batch.

* ``_features_teacher_forced``: ``ShardedFeatures`` over the shards beside ``TorchFeatures`` over an
  unsharded copy whose parameters and gradients are the gathered whole ones, every step (teacher-forced:
  the copy is re-synchronised each step, so only the features' own arithmetic is compared), both driven by
  the same calls — the loss, the clip's norms on some steps, a clip, the sensed step, the window's read.
* ``_brain_run``: an OptBrain over AdamW (and over FusedGate's FSDP2 path) that learns and clips; its
  parameters, policy and report, for the ranks to agree and for a single process over the whole batch.
* ``_resumed``: that run saved mid-window and resumed in fresh objects, each rank its own ``.npz``.
* ``_resumed_dcp``: the same run without the dampen (the default) saved and resumed through
  ``torch.distributed.checkpoint``: model and AdamW as DCP's state dicts, the brain's arrays beside them.
* ``_refusals``: what cannot hold over shards, each in one line."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import join_ranks, run_gloo_rank
from fsdp_worker import GLOBAL_BATCH, MUON_LR, Net, full_params, global_batch, shard

from fusedgate.brain import BrainError, OptBrain
from fusedgate.brain.torch_features import TorchFeatures
from fusedgate.optimizer import FusedGate
from fusedgate.spec import GateSpec

WINDOW, SKETCH, SEED = 3, 8, 5
STEPS = 48                 # window 3: the warm-up, learning cycles, then the warmdown test's quarter
BRAIN = dict(window=WINDOW, warmup_windows=1, alpha_start=1.0, z_shrink=10.0, explore=2.0, total_steps=STEPS,
             sketch_size=SKETCH)
SAVE_AT = 29               # in window 9 (steps 27–29), where the dampen is on in two groups
CLIP = np.array([0.5, np.inf, 1.5])   # group 0's gradients held under half their running norm; group 2's over it
START_METHOD = "forkserver"   # as dist_worker.START_METHOD


def groups_of(model) -> list[dict]:
    """Three param groups: the matrices, the biases, the embedding and head."""
    named = dict(model.named_parameters())
    matrices = [p for n, p in named.items() if p.ndim == 2 and n not in ("embed.weight", "out.weight")]
    return [dict(params=matrices), dict(params=[p for p in named.values() if p.ndim == 1]),
            dict(params=[named["embed.weight"], named["out.weight"]])]


def _slice(step: int, rank: int, world: int):
    tokens, targets = global_batch(step)
    share = GLOBAL_BATCH // world
    return tokens[rank * share:(rank + 1) * share], targets[rank * share:(rank + 1) * share]


def _drive(features: TorchFeatures, step: int, loss, clip: bool) -> None:
    """One step's calls on ``features``: the loss; the clipping groups' norms and the clip on odd steps;
    on the window's last step the sensed values (before the clip, as the brain does)."""
    k = step % WINDOW
    features.record_loss(k, loss)
    if k == WINDOW - 1:
        features.sense()
    if clip:
        features.clip_(CLIP)
    features.end_step()


def _norm_of_matrix_grads(model) -> float:
    return float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in groups_of(model)[0]["params"]])))


def _features_teacher_forced(rank: int, world: int) -> dict:
    model, whole = shard(Net(), world), Net()
    from fusedgate.brain.sharded_features import ShardedFeatures

    sharded = ShardedFeatures([g["params"] for g in groups_of(model)], WINDOW, SKETCH, SEED)
    reference = TorchFeatures([g["params"] for g in groups_of(whole)], WINDOW, SKETCH, SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    out = {"losses": [], "features": [], "clipped": [], "ema": [], "shrunk": []}
    for step in range(4 * WINDOW):
        loss = F.cross_entropy(model(_slice(step, rank, world)[0]), _slice(step, rank, world)[1])
        loss.backward()
        with torch.no_grad():                     # the copy: the whole parameters and gradients, this step's
            for p, q in zip(model.parameters(), whole.parameters()):
                q.copy_(p.full_tensor())
                q.grad = p.grad.full_tensor().clone()
        whole_loss = F.cross_entropy(whole(global_batch(step)[0]), global_batch(step)[1]).detach()
        clip = step % 2 == 1
        before = _norm_of_matrix_grads(whole)
        _drive(sharded, step, loss.detach(), clip)
        _drive(reference, step, whole_loss, clip)
        if clip:
            out["shrunk"].append(_norm_of_matrix_grads(whole) / before)
            out["clipped"].append(torch.stack([(p.grad.full_tensor() - q.grad).abs().max()
                                               for p, q in zip(model.parameters(), whole.parameters())]).max())
        if step % WINDOW == WINDOW - 1:
            sharded.average_over(sharded.group)
            (a_loss, a_feat), (b_loss, b_feat) = sharded.read_window(), reference.read_window()
            out["losses"].append((a_loss, b_loss))
            out["features"].append((a_feat, b_feat))
            out["ema"].append((sharded.running_norm().clone(), reference.running_norm().clone()))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return out


def _train(model, brain, rank: int, world: int, start: int = 0, stop: int = STEPS) -> dict:
    """Steps start..stop-1 on this rank's slices; the whole parameters, the policy, the report and the knobs
    each window started under."""
    knobs = []
    for step in range(start, stop):
        if step % WINDOW == 0:
            knobs.append(brain.core.decisions.copy())
        tokens, targets = _slice(step, rank, world)
        loss = F.cross_entropy(model(tokens), targets)
        loss.backward()
        brain.step(loss=loss.detach())
        brain.zero_grad(set_to_none=True)
    return {"params": full_params(model), "report": brain.report(), "knobs": torch.from_numpy(np.stack(knobs)),
            "policy": {"b": torch.from_numpy(brain.core.b.copy())}}


def _model_and_brain(base: str, world: int, seed: int = 0, dampen: bool = True):
    """``Net`` (sharded over ``world`` ranks if more than one) and an OptBrain over AdamW (``base="adamw"``:
    three groups, the dampen's exploration on too unless ``dampen=False``) or over FusedGate's gated preset
    (``"fusedgate"``)."""
    model = Net(seed)
    if world > 1:
        shard(model, world)
    if base == "adamw":
        sigma = (0.25, 0.25, 0.1 if dampen else 0.0)
        return model, OptBrain(torch.optim.AdamW(groups_of(model), lr=3e-3), **BRAIN, sigma=sigma)
    spec = GateSpec.gated().replace(lr=MUON_LR, weight_decay=0.01)
    return model, OptBrain(FusedGate(model.named_parameters(), spec=spec, total_steps=STEPS), **BRAIN)


def brain_run(base: str, rank: int = 0, world: int = 1) -> dict:
    """``_train`` over the whole run on ``world`` ranks (1: one process over the whole batch, unsharded)."""
    return _train(*_model_and_brain(base, world), rank, world)


def _resumed(rank: int, world: int, directory: Path) -> dict:
    """The AdamW run stopped at ``SAVE_AT`` (mid-window, with dampen buffers held: each rank's are its rows),
    saved (the brain to a per-rank ``.npz``, the model and optimizer state dicts of DTensors in memory),
    loaded into a fresh model and brain and run to the end."""
    model, brain = _model_and_brain("adamw", world)
    _train(model, brain, rank, world, 0, SAVE_AT)
    path = directory / f"brain_rank{rank}_of_{world}.npz"
    brain.save(path)
    damped = brain._dampen_valid.copy()
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(brain.base.state_dict())
    model, brain = _model_and_brain("adamw", world, seed=1)
    model.load_state_dict(saved[0])
    brain.base.load_state_dict(saved[1])
    brain.load(path)
    return {**_train(model, brain, rank, world, SAVE_AT, STEPS), "damped_at_save": torch.from_numpy(damped)}


def _resumed_dcp(rank: int, world: int, directory: Path) -> dict:
    """The AdamW run without the dampen, straight and saved at ``SAVE_AT`` through DCP (one checkpoint for
    all ranks: the brain's arrays are the same on every rank, so DCP stores them once), loaded into fresh
    objects and run to the end."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    def state(model, brain) -> dict:
        return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, brain.base),
                "brain": brain.state_dict()["optbrain"]}

    straight = _train(*_model_and_brain("adamw", world, dampen=False), rank, world)
    model, brain = _model_and_brain("adamw", world, dampen=False)
    _train(model, brain, rank, world, 0, SAVE_AT)
    checkpoint = str(directory / f"brain_dcp_of_{world}")
    dcp.save(state(model, brain), checkpoint_id=checkpoint)
    model, brain = _model_and_brain("adamw", world, seed=1, dampen=False)
    loaded = state(model, brain)
    dcp.load(loaded, checkpoint_id=checkpoint)
    set_model_state_dict(model, loaded["model"])
    set_optimizer_state_dict(model, brain.base, loaded["optim"])
    brain.load_state_dict({**brain.base.state_dict(), "optbrain": loaded["brain"]})
    return {"straight": straight, "resumed": _train(model, brain, rank, world, SAVE_AT, STEPS)}


def _refusals(rank: int, world: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    def refusal(make) -> str:
        try:
            make()
        except BrainError as exc:
            return str(exc)
        return "accepted"

    out = {"own": refusal(lambda: OptBrain(torch.optim.AdamW(shard(Net(), world).parameters()), sync_ranks=False))}
    part = Net()
    fully_shard(part.blocks[0], mesh=init_device_mesh("cpu", (world,)))
    out["mixed"] = refusal(lambda: OptBrain(torch.optim.AdamW(part.parameters())))
    hybrid = Net()
    fully_shard(hybrid, mesh=init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard")))
    out["hybrid"] = refusal(lambda: OptBrain(torch.optim.AdamW(hybrid.parameters())))
    return out


def _runs(rank: int, world: int, directory: Path) -> dict:
    return {"features": _features_teacher_forced(rank, world),
            **{base: brain_run(base, rank, world) for base in ("adamw", "fusedgate")},
            "resumed": _resumed(rank, world, directory), "resumed_dcp": _resumed_dcp(rank, world, directory),
            "refusals": _refusals(rank, world)}


def worker(rank: int, world: int, store: str, out: str) -> None:
    run_gloo_rank(rank, world, store, out, lambda: _runs(rank, world, Path(out)))


def spawn(world: int, out: Path, timeout_s: float = 300.0) -> list[dict]:
    """``worker`` on ``world`` gloo processes; their results, by rank."""
    ctx = mp.start_processes(worker, args=(world, str(out / f"brain_fsdp_store_{world}"), str(out)),
                             nprocs=world, join=False, start_method=START_METHOD)
    return join_ranks(ctx, world, out, timeout_s, poll_s=1.0)

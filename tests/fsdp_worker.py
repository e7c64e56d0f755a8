"""Processes for the FSDP2 tests: a small model whose matrices' dim 0 divides neither by 2 nor by 3 (and one
with an empty shard on 3 ranks), FusedGate on it under ``fully_shard`` (gloo, CPU), and DCP round trips.

Every run trains on the same global batch per step (as ``dist_worker``); rank r of N takes the r-th
slice, FSDP2 averages the gradients, so an N-rank run and a single process over the whole batch follow
the same mathematics up to the rounding of the average."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import join_ranks, resynchronise, run_gloo_rank, train_on_slices
from torch import nn

from fusedgate.distributed import state_bytes
from fusedgate.optimizer import FusedGate
from fusedgate.spec import GateSpec

GLOBAL_BATCH = 24          # divisible by 1, 2, 3
STEPS = 20
SAVE_AT = 10
VOCAB, WIDTH, ODD, CLASSES = 30, 8, 7, 2
MUON_LR = 1e-4             # see dist_worker.MUON_LR: small enough that the rank count is only rounding
PRESETS = ("adamw", "nanochat", "gated")
START_METHOD = "forkserver"   # as dist_worker.START_METHOD


class Net(nn.Module):
    """Embedding 30×8 (AdamW, sharded too) → 7×8 (+ bias) → a stack of two 7×7 (+ biases) → 8×7 → a 2×8 head:
    7 rows split 4, 3 on 2 ranks and 3, 3, 1 on 3; the head's 2 rows split 1, 1, 0 on 3 ranks (an empty shard)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.inp = nn.Linear(WIDTH, ODD)
        self.blocks = nn.ModuleList(nn.Linear(ODD, ODD) for _ in range(2))
        self.mid = nn.Linear(ODD, WIDTH, bias=False)
        self.out = nn.Linear(WIDTH, CLASSES, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(self.embed(tokens)))
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.out(torch.tanh(self.mid(h)))


def shard(model: Net, world: int) -> Net:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def make_optimizer(model: Net, preset: str, backend: str = "auto") -> FusedGate:
    if preset == "adamw":
        return FusedGate(model.named_parameters(), spec=GateSpec.adamw(lr=3e-3, weight_decay=0.01), backend=backend)
    if preset == "nanochat":
        named = dict(model.named_parameters())
        matrices = [p for n, p in named.items() if p.ndim == 2 and n != "embed.weight"]
        groups = [dict(kind="adamw", params=[p for n, p in named.items() if p.ndim == 1 or n == "embed.weight"],
                       lr=3e-3, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]
        for shape in sorted({tuple(p.shape) for p in matrices}):
            groups.append(dict(kind="muon", params=[p for p in matrices if tuple(p.shape) == shape], lr=MUON_LR,
                               momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=0.01))
        return FusedGate(groups, spec=GateSpec.nanochat(), backend=backend)
    spec = GateSpec.gated().replace(lr=MUON_LR, weight_decay=0.01)
    return FusedGate(model.named_parameters(), spec=spec, total_steps=STEPS, backend=backend)


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH,), generator=g)
    return tokens, torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)


def train(model: nn.Module, opt: FusedGate, start: int, stop: int, rank: int = 0, world: int = 1,
          on_step=None, shards: int = 1) -> None:
    """``conftest.train_on_slices`` on this module's ``global_batch``."""
    train_on_slices(model, opt, global_batch, start, stop, rank, world, on_step, shards)


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole parameters (DTensors gathered: a collective)."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def single_process(preset: str, stop: int = STEPS, shards: int = 1) -> dict[str, torch.Tensor]:
    model = Net()
    train(model, make_optimizer(model, preset), 0, stop, shards=shards)
    return full_params(model)


# ---------------------------------------------------------------------------- inside each rank
def _options(flat: bool):
    """DSD's options: ``flat``, torchtitan's flattened optimizer state dict (one key per parameter and entry)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=flat)


def _dcp_state(model, opt, flat: bool = False) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt, options=_options(flat))}


def _save(model, opt, path: Path) -> None:
    """A DCP checkpoint in ``path``, and the whole (gathered) state dicts in ``path``.pt, written by rank 0."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    dcp.save(_dcp_state(model, opt), checkpoint_id=str(path))
    dcp.save(_dcp_state(model, opt, flat=True), checkpoint_id=f"{path}_flat")
    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {"model": get_model_state_dict(model, options=whole),
             "optim": get_optimizer_state_dict(model, opt, options=whole)}
    if dist.get_rank() == 0:
        torch.save(state, f"{path}.pt")


def resume_whole(path: Path) -> dict[str, torch.Tensor]:
    """One process, plain parameters: the whole state dicts of ``_save`` loaded (DSD maps the names), trained
    to STEPS."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = torch.load(path, weights_only=False)
    model = Net(seed=123)
    model.load_state_dict(state["model"])
    opt = make_optimizer(model, "gated")
    set_optimizer_state_dict(model, opt, state["optim"])
    train(model, opt, SAVE_AT, STEPS)
    return full_params(model)


def _resume(path: Path, rank: int, world: int, flat: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A fresh sharded model and optimizer (another init) loaded from the DCP checkpoint, trained to STEPS:
    (the parameters, the global state as loaded)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    model = shard(Net(seed=123), world)
    opt = make_optimizer(model, "gated")
    state = _dcp_state(model, opt, flat)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"], options=_options(flat))
    loaded = opt._global.clone()
    train(model, opt, SAVE_AT, STEPS, rank, world)
    return full_params(model), loaded


def _resume_whole_sharded(path: Path, rank: int, world: int) -> dict[str, torch.Tensor]:
    """The whole state dicts of ``_save`` (every rank reads the file) into a sharded model and straight into
    ``FusedGate.load_state_dict``, which shards the whole moments itself; trained to STEPS."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = torch.load(path, weights_only=False)
    model = shard(Net(seed=123), world)
    set_model_state_dict(model, state["model"], options=StateDictOptions(full_state_dict=True))
    opt = make_optimizer(model, "gated")
    opt.load_state_dict(state["optim"])
    train(model, opt, SAVE_AT, STEPS, rank, world)
    return full_params(model)


def _refusals(world: int) -> dict[str, str]:
    """The one-line errors: FSDP2 and plain parameters mixed, another placement, a mode for plain parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    out = {}
    model = shard(Net(), world)
    cases = {"mixed": lambda: FusedGate([*model.parameters(), nn.Parameter(torch.zeros(3, 3))]),
             "replicate": lambda: FusedGate([nn.Parameter(distribute_tensor(
                 torch.zeros(4, 4), init_device_mesh("cpu", (world,)), [Replicate()]))]),
             "zero2": lambda: FusedGate(model.parameters(), distributed="zero2")}
    for case, build in cases.items():
        try:
            build()
            out[case] = "accepted"
        except (TypeError, ValueError) as exc:
            out[case] = str(exc)
    opt = make_optimizer(model, "gated")   # a loss on rank 0 only: refused on every rank, no collective hangs
    tokens, targets = global_batch(0)
    loss = F.cross_entropy(model(tokens), targets)
    loss.backward()
    try:
        opt.step(loss=loss.detach() if dist.get_rank() == 0 else None)
        out["loss_on_some_ranks"] = "accepted"
    except RuntimeError as exc:
        out["loss_on_some_ranks"] = str(exc)
    return out


def _nonfinite(rank: int, world: int, backend: str = "auto") -> dict:
    """A NaN in the last rank's rows of one matrix's gradient: that matrix's step is skipped on every rank
    (the finiteness test is all-reduced), the others step."""
    model = shard(Net(), world)
    opt = make_optimizer(model, "gated", backend)
    train(model, opt, 0, 1, rank, world)
    before = full_params(model)
    tokens, targets = global_batch(1)
    share = GLOBAL_BATCH // world
    F.cross_entropy(model(tokens[rank * share:(rank + 1) * share]), targets[rank * share:(rank + 1) * share]).backward()
    if rank == world - 1:
        model.blocks[0].weight.grad.to_local()[0, 0] = float("nan")
    opt.step()
    after = full_params(model)
    return {"skipped": opt.skipped_steps()["blocks.0.weight"],
            "unchanged": torch.equal(after["blocks.0.weight"], before["blocks.0.weight"]),
            "others_stepped": all(not torch.equal(after[n], before[n]) for n in ("blocks.1.weight", "mid.weight"))}


def _triton_shards(rank: int, world: int) -> float:
    """The Triton backend on the local shards (3 free-running steps of the gated spec: its AdamW parameters and
    its gated matrices through the kernels, ``fusedgate.kernels.sharded``) against the reference backend: max
    relative difference."""
    spec = GateSpec.gated().replace(lr=MUON_LR)
    results = []
    for backend in ("triton", "reference"):
        model = shard(Net(), world)
        train(model, FusedGate(model.named_parameters(), spec=spec, backend=backend), 0, 3, rank, world)
        results.append(full_params(model))
    return max(((results[0][n] - results[1][n]).abs().max() / results[1][n].abs().max()).item() for n in results[1])


def _local_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| over this rank's rows (0 for an empty shard)."""
    a, b = (getattr(t, "_local_tensor", t).detach().double() for t in (a, b))
    return 0.0 if b.numel() == 0 else ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _teacher_forced(rank: int, world: int, preset: str, steps: int = 3) -> dict:
    """``backend="triton"`` against ``backend="reference"`` on twin FSDP2 models, step by step: both step from
    the reference's parameters and state (copied into the Triton twin after each step), so each step's
    difference is that step's alone. The worst relative differences of the parameters and of the state
    (moments, sensors, counts, decay products, NorMuon moments) over this rank's rows, and the Triton
    optimizer's launch-table kinds (the kernels' own record that they ran)."""
    twins = []
    for backend in ("triton", "reference"):
        model = shard(Net(), world)
        twins.append((model, make_optimizer(model, preset, backend)))
    (tri_model, tri), (ref_model, ref) = twins
    worst = {"params": 0.0, "state": 0.0}
    for step in range(steps):
        for model, opt in twins:
            train(model, opt, step, step + 1, rank, world)
        pairs = list(zip(tri_model.parameters(), ref_model.parameters()))
        worst["params"] = max([worst["params"]] + [_local_diff(a, b) for a, b in pairs])
        worst["state"] = max([worst["state"]] + [_local_diff(tri.state[a][key], value) for a, b in pairs
                                                 for key, value in ref.state[b].items()])
        resynchronise(tri_model.parameters(), tri, ref_model.parameters(), ref)
    gated = {(index, tuple(p.shape), p.dtype) for index, g in enumerate(ref.param_groups)
             for i, p in enumerate(g["params"]) if ref.is_gated(g, i, p)}
    worst["layouts"] = sorted(key[0] for key in tri._cache if key[0].startswith("fsdp2"))
    worst["gated_runs"] = len(gated)
    return worst


def _job(rank: int, world: int, out: Path, load_from: str, job: str) -> dict:
    result = {}
    if job == "triton":
        result["triton"] = _triton_shards(rank, world)
    elif job == "triton_forced":
        result.update({preset: _teacher_forced(rank, world, preset) for preset in PRESETS[1:]})
        result["nonfinite"] = _nonfinite(rank, world, backend="triton")
    elif load_from:
        result["resumed"], result["loaded_global"] = _resume(Path(load_from), rank, world)
        result["resumed_flat"], result["loaded_global_flat"] = _resume(Path(f"{load_from}_flat"), rank, world,
                                                                       flat=True)
        if world > 1:
            result["resumed_whole"] = _resume_whole_sharded(Path(f"{load_from}.pt"), rank, world)
    if world > 1 and job == "main":
        for preset in PRESETS:
            model = shard(Net(), world)
            opt = make_optimizer(model, preset)
            saver = None
            if preset == "gated" and world == 2:
                def saver(step, model=model, opt=opt):
                    if step == SAVE_AT:
                        result["saved_global"] = opt._global.clone()
                        _save(model, opt, out / "dcp_world2")
            train(model, opt, 0, STEPS, rank, world, on_step=saver)
            result[f"fsdp2/{preset}"] = full_params(model)
            result[f"traffic/{preset}"] = opt._sync.traffic_bytes(opt)
            result[f"state_bytes/{preset}"] = state_bytes(opt)
        result["refusals"] = _refusals(world)
        result["nonfinite"] = _nonfinite(rank, world)
    return result


def worker(rank: int, world: int, store: str, out: str, load_from: str, job: str = "main") -> None:
    run_gloo_rank(rank, world, store, out, lambda: _job(rank, world, Path(out), load_from, job))


def spawn(world: int, out: Path, load_from: Path | None = None, timeout_s: float = 240.0,
          job: str = "main") -> list[dict]:
    """Run ``worker`` on ``world`` gloo processes (from the forkserver; a file store); their results, by rank."""
    store = out / f"store_fsdp_{job}_{world}"
    ctx = mp.start_processes(worker, args=(world, str(store), str(out), str(load_from or ""), job),
                             nprocs=world, join=False, start_method=START_METHOD)
    return join_ranks(ctx, world, out, timeout_s, poll_s=1.0)

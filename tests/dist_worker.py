"""Processes for the distributed tests: a small model with uneven same-shape stacks, the training loop
shared by single-process and multi-process runs, and a spawner with a deadline.

Every run trains on the same global batch per step (GLOBAL_BATCH examples, a function of the step only);
rank r of N takes the r-th contiguous slice, so an N-rank run and a single process over the whole batch
follow the same mathematics, and differ only by the rounding of the gradient average."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import join_ranks, run_gloo_rank, train_on_slices
from torch import nn

from fusedgate.distributed import state_bytes
from fusedgate.optimizer import FusedGate
from fusedgate.spec import GateSpec

GLOBAL_BATCH = 48          # divisible by 1, 2, 3
STEPS = 20
SAVE_AT = 10
VOCAB, WIDTH, WIDE, CLASSES = 128, 8, 12, 5   # the embedding has 1024 elements: split element-wise
# forkserver: the children fork from a server that imported torch and fusedgate once (``conftest``: a spawned
# child spends seconds importing them, and a child forked from pytest, which has run autograd, cannot run it
# again in torch's CUDA builds); the parent runs no process group and the children use one thread each
START_METHOD = "forkserver"


class Net(nn.Module):
    """Embedding (128×8: large enough to be split element-wise) → 5 residual 8×8 layers (a stack of K=5)
    → a gated pair of 12×8 (K=2) → 8×12 → 5×8 head. On 2 and 3 ranks the stacks of 5 and 2 do not divide
    evenly, and 5 rows do not divide either."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(5))
        self.up_a = nn.Linear(WIDTH, WIDE, bias=False)
        self.up_b = nn.Linear(WIDTH, WIDE, bias=False)
        self.down = nn.Linear(WIDE, WIDTH, bias=False)
        self.head = nn.Linear(WIDTH, CLASSES, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        h = h + self.down(torch.tanh(self.up_a(h)) * torch.sigmoid(self.up_b(h)))
        return self.head(h)

    def nanochat_groups(self) -> list[dict]:
        """nanochat-style groups: AdamW for the embedding and the vectors, one kind='muon' group per shape."""
        matrices = [p for n, p in self.named_parameters() if p.ndim == 2 and n != "embed.weight"]
        groups = [dict(kind="adamw", params=[self.embed.weight], lr=0.01, betas=(0.8, 0.995), eps=1e-10,
                       weight_decay=0.001),
                  dict(kind="adamw", params=[p for p in self.parameters() if p.ndim == 1], lr=0.004,
                       betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]
        for shape in sorted({tuple(p.shape) for p in matrices}):
            groups.append(dict(kind="muon", params=[p for p in matrices if tuple(p.shape) == shape], lr=MUON_LR,
                               momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=0.01))
        return groups


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH,), generator=g)
    return tokens, torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)


PRESETS = ("adamw", "nanochat", "gated")
# Muon's orthogonaliser maps a gradient's small singular values to ~1, so a 1-ulp difference in the averaged
# gradient (a sum over ranks rounds differently from one big batch) moves its direction by far more than
# 1 ulp: after 20 steps at lr 4e-3 the rank-count runs differ from the single process by ~3e-6 (max rel),
# at 5e-4 by < 1e-6. The tests use 5e-4, where the comparison with the single process is meaningful; the
# bit-exact comparison (``single_process(shards=2)``) holds at any lr.
MUON_LR = 5e-4


def make_optimizer(model: Net, preset: str, mode: str, group=None) -> FusedGate:
    """The three presets at small learning rates (Muon's orthogonaliser amplifies rounding differences
    between runs at large ones)."""
    if preset == "adamw":
        return FusedGate(model.named_parameters(), spec=GateSpec.adamw(lr=3e-3), distributed=mode,
                         process_group=group)
    if preset == "nanochat":
        return FusedGate(model.nanochat_groups(), spec=GateSpec.nanochat(), distributed=mode, process_group=group)
    spec = GateSpec.gated().replace(lr=MUON_LR, weight_decay=0.01)
    return FusedGate(model.named_parameters(), spec=spec, total_steps=STEPS, distributed=mode, process_group=group)


def train(model: nn.Module, opt: FusedGate, start: int, stop: int, rank: int = 0, world: int = 1,
          on_step=None, shards: int = 1) -> None:
    """``conftest.train_on_slices`` on this module's ``global_batch``."""
    train_on_slices(model, opt, global_batch, start, stop, rank, world, on_step, shards)


def state_elements(opt: FusedGate) -> int:
    """Elements of the state tensors that are not scalars (moments, NorMuon moments, sensors)."""
    return sum(v.numel() for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def single_process(preset: str, stop: int = STEPS, shards: int = 1) -> dict[str, torch.Tensor]:
    model = Net()
    opt = make_optimizer(model, preset, "auto")
    train(model, opt, 0, stop, shards=shards)
    return params_of(model)


def load_and_continue(checkpoint: Path, preset: str, rank: int = 0, world: int = 1, mode: str = "auto",
                      group=None):
    """A fresh model and optimizer from ``checkpoint``, trained from SAVE_AT to STEPS."""
    ckpt = torch.load(checkpoint, weights_only=False)
    model = Net(seed=123)   # different init: everything must come from the checkpoint
    model.load_state_dict(ckpt["model"])
    opt = make_optimizer(model, preset, mode, group)
    opt.load_state_dict(ckpt["optimizer"])
    train(model, opt, SAVE_AT, STEPS, rank, world)
    return params_of(model)


# ---------------------------------------------------------------------------- inside each rank
def _zero2_runs(rank: int, world: int, out: Path, load_from: list[Path]) -> dict:
    """The three presets in zero2 (the default one saving a checkpoint at SAVE_AT), then this world's
    checkpoint and those of ``load_from`` resumed here, and on 3 ranks this world's checkpoint resumed on a
    2-rank subgroup (ranks 0 and 1, via ``process_group``)."""
    result = {}
    for preset in PRESETS:
        model = Net()
        opt = make_optimizer(model, preset, "zero2")
        saver = None
        if preset == "gated":
            def saver(step, model=model, opt=opt):
                if step == SAVE_AT:
                    sd = opt.state_dict()     # a collective: every rank gathers the full state
                    if rank == 0:
                        torch.save({"model": model.state_dict(), "optimizer": sd}, out / f"ckpt_world{world}.pt")
                    dist.barrier()
        train(model, opt, 0, STEPS, rank, world, on_step=saver)
        result[f"zero2/{preset}"] = params_of(model)
        result[f"state_bytes/{preset}"] = state_bytes(opt)
        result[f"state_elements/{preset}"] = state_elements(opt)
        result[f"deepcopy/{preset}"] = len(copy.deepcopy(opt).state) == len(opt.state)
        model = Net()   # nanochat's loop with FusedGate swapped in, no argument added: the first step decides
        opt = make_optimizer(model, preset, "auto")
        train(model, opt, 0, STEPS, rank, world)
        result[f"auto/{preset}"] = params_of(model)
        result[f"auto_mode/{preset}"] = opt._sync.chosen.mode
    for path in [out / f"ckpt_world{world}.pt", *load_from]:
        result[f"resumed/{path.name}"] = load_and_continue(path, "gated", rank, world, "zero2")
    if world == 3:
        pair = dist.new_group([0, 1])   # every rank takes part in creating it
        if rank < 2:
            result["resumed on 2 of 3"] = load_and_continue(out / "ckpt_world3.pt", "gated", rank, 2, "zero2", pair)
        dist.barrier()
    return result


def _ddp_run(rank: int, world: int, preset: str, mode: str = "replicated") -> tuple[dict, str]:
    """(the parameters after a DDP run with FusedGate in ``mode``, the mode it ran in)."""
    model = Net()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = make_optimizer(model, preset, mode)
    share = GLOBAL_BATCH // world
    for step in range(STEPS):
        tokens, targets = global_batch(step)
        loss = F.cross_entropy(ddp(tokens[rank * share:(rank + 1) * share]), targets[rank * share:(rank + 1) * share])
        loss.backward()
        opt.step(loss=loss.detach())   # each rank's own loss: FusedGate averages it
        opt.zero_grad(set_to_none=True)
    return params_of(model), (opt._sync.chosen.mode if mode == "auto" else opt._sync.mode)


def _mismatches(rank: int, world: int) -> dict[str, str]:
    """Process groups whose ranks disagree on the parameter list, or on which parameters have gradients:
    each refused, on every rank, at the first step (one line naming the first mismatch, never a hang)."""
    out = {}
    tokens, targets = global_batch(0)
    for case, mode in (("extra_param", "zero2"), ("extra_param_auto", "auto"), ("other_shape", "replicated"),
                       ("missing_grad", "zero2"), ("missing_grad_auto", "auto")):
        model = Net()
        params = list(model.named_parameters())
        if case.startswith("extra_param") and rank == world - 1:
            params.append(("extra", nn.Parameter(torch.zeros(3, 3))))
        if case == "other_shape" and rank == 1:
            params[3] = ("swapped", nn.Parameter(torch.zeros(2, 7)))
        opt = FusedGate(params, spec=GateSpec.gated(), distributed=mode)
        F.cross_entropy(model(tokens[rank::world]), targets[rank::world]).backward()
        if case.startswith("missing_grad") and rank == 1:
            model.up_b.weight.grad = None
        try:
            opt.step(loss=torch.tensor(1.0))
            out[case] = "accepted"
        except RuntimeError as exc:
            out[case] = str(exc)
        out[f"{case}_state"] = str(len(opt.state))
    return out


def _refusals(rank: int, world: int) -> dict[str, str]:
    """The one-line errors a wrong setup gets, each before any optimizer state exists."""
    out = _mismatches(rank, world)
    model = Net()
    opt = make_optimizer(model, "default", "replicated")   # no DDP: the gradients differ
    F.cross_entropy(model(global_batch(0)[0][rank::world]), global_batch(0)[1][rank::world]).backward()
    try:
        opt.step()
    except RuntimeError as exc:
        out["replicated_without_ddp"] = str(exc)
    out["replicated_without_ddp_state"] = str(len(opt.state))

    model = Net()   # zero2 on DDP-averaged gradients: correct, but a second average; it says so
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = make_optimizer(model, "default", "zero2")
    F.cross_entropy(ddp(global_batch(0)[0][rank::world]), global_batch(0)[1][rank::world]).backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    out["zero2_under_ddp"] = " ".join(str(w.message) for w in caught if "zero2" in str(w.message))

    model = Net()   # a loss on rank 0 only: the loss all-reduce would not match; refused on every rank
    opt = make_optimizer(model, "default", "zero2")
    loss = F.cross_entropy(model(global_batch(0)[0][rank::world]), global_batch(0)[1][rank::world])
    loss.backward()
    try:
        opt.step(loss=loss.detach() if rank == 0 else None)
    except RuntimeError as exc:
        out["loss_on_some_ranks"] = str(exc)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    sharded = Net()
    for layer in sharded.layers:
        fully_shard(layer, mesh=init_device_mesh("cpu", (world,)))
    fully_shard(sharded, mesh=init_device_mesh("cpu", (world,)))
    try:
        FusedGate(sharded.parameters(), distributed="zero2")
    except TypeError as exc:
        out["fsdp2"] = str(exc)
    return out


def _all_runs(rank: int, world: int, out: Path, load_from: list[Path]) -> dict:
    result = _zero2_runs(rank, world, out, load_from)
    for preset in PRESETS:
        result[f"ddp/{preset}"], _ = _ddp_run(rank, world, preset)
        result[f"ddp_auto/{preset}"], result[f"ddp_auto_mode/{preset}"] = _ddp_run(rank, world, preset, "auto")
    result["refusals"] = _refusals(rank, world)
    return result


def worker(rank: int, world: int, store: str, out: str, load_from: list[str]) -> None:
    run_gloo_rank(rank, world, store, out, lambda: _all_runs(rank, world, Path(out), [Path(p) for p in load_from]))


def _brain_run(rank: int, world: int, base: str, sync_ranks: bool) -> dict:
    """An OptBrain over AdamW under DDP (``base="ddp"``) or over FusedGate's ZeRO-2 (``"zero2"``: the gradients
    are each rank's own until FusedGate averages them inside its step), every rank passing its own loss, in a
    run whose last quarter holds the warmdown test (its partner windows read every step's loss)."""
    from fusedgate.brain import OptBrain

    model = Net()
    if base == "ddp":
        forward = nn.parallel.DistributedDataParallel(model)
        inner = torch.optim.AdamW(model.parameters(), lr=3e-3)
    else:
        forward, inner = model, make_optimizer(model, "nanochat", "zero2")
    steps = 48                            # window 3: 11 learning windows (2 cycles), then the warmdown test
    brain = OptBrain(inner, window=3, warmup_windows=1, alpha_start=1.0, z_shrink=10.0, explore=2.0,
                     total_steps=steps, sync_ranks=sync_ranks)
    share = GLOBAL_BATCH // world
    for step in range(steps):
        tokens, targets = global_batch(step)
        loss = F.cross_entropy(forward(tokens[rank * share:(rank + 1) * share]),
                               targets[rank * share:(rank + 1) * share])
        loss.backward()
        brain.step(loss=loss.detach())
        brain.zero_grad(set_to_none=True)
    return {"params": params_of(model), "policy": {"b": torch.from_numpy(brain.core.b.copy()),
                                                   "decisions": torch.from_numpy(brain.core.decisions.copy())},
            "report": brain.report()}


def _brain_runs(rank: int, world: int) -> dict:
    result = {f"{base}/{'synced' if sync else 'own'}": _brain_run(rank, world, base, sync)
              for base in ("ddp", "zero2") for sync in (True, False)}
    return result


def brain_worker(rank: int, world: int, store: str, out: str) -> None:
    run_gloo_rank(rank, world, store, out, lambda: _brain_runs(rank, world))


def spawn_brain(world: int, out: Path, timeout_s: float = 300.0) -> list[dict]:
    """``brain_worker`` on ``world`` gloo processes; their results, by rank."""
    ctx = mp.start_processes(brain_worker, args=(world, str(out / f"brain_store_{world}"), str(out)),
                             nprocs=world, join=False, start_method=START_METHOD)
    return join_ranks(ctx, world, out, timeout_s, poll_s=2.0)


def spawn(world: int, out: Path, load_from: list[Path] = (), timeout_s: float = 300.0) -> list[dict]:
    """Run ``worker`` on ``world`` gloo processes (from the forkserver; a file store: no ports); their results, by
    rank."""
    store = out / f"store_{world}"
    ctx = mp.start_processes(worker, args=(world, str(store), str(out), [str(p) for p in load_from]),
                             nprocs=world, join=False, start_method=START_METHOD)
    return join_ranks(ctx, world, out, timeout_s, poll_s=5.0)

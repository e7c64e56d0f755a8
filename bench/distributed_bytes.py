"""Per-rank optimizer state and communication per step of FusedGate's ZeRO-2 mode, next to nanochat's
distributed MuonAdamW, on a nanochat GPT (CPU, gloo).

For each preset (``--presets``, default nanochat and default) and world size N the script starts N gloo
processes; each builds the same GPT and nanochat's param groups, runs one FusedGate step
(``distributed='zero2'``) on random gradients and reports the bytes of its optimizer state per parameter
(measured: the tensors it holds) and the bytes it sends per step
(by design, ``Zero2.traffic_bytes``: ring reduce-scatter and all-gather move (N−1)/N of their buffer). The
nanochat columns are computed from its ``DistMuonAdamW`` design (karpathy/nanochat, nanochat/optim.py):
Muon groups keep a momentum (4 B/element for fp32 params) and a factored second moment for their ⌈K/N⌉
chunk and reduce-scatter + all-gather the padded stack; AdamW tensors of < 1024 elements are all-reduced
and their 8 B/element state replicated, larger ones reduce-scattered along dim 0 (1/N of the state); at
N = 1 the nanochat column is measured on the project's ``MuonAdamW`` (the same state as nanochat's).
The FSDP2 column is FusedGate's FSDP2 mode by design (``fusedgate.fsdp.traffic``, what ``Fsdp2.traffic_bytes``
reports on each rank: the orthogonaliser's two all-to-alls and the sums' all-reduces, the largest over the
ranks), from the same groups; FSDP2's own all-gathers and reduce-scatter belong to the model and are left out.

    python -m fusedgate.bench.distributed_bytes --depth 4 --vocab 8192 --worlds 1 2 3 4
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fusedgate.argtypes import int_in
from fusedgate.cli import OneLineErrorParser
from fusedgate.files import markdown_table
from fusedgate.ranks import exit_rank


def _model(depth: int, vocab: int):
    from fusedgate.nanochat.model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig.from_depth(depth, vocab_size=vocab, sequence_len=128))


def _groups(model) -> list[dict]:
    return model.param_groups(0.3, 0.008, 0.02, 0.0)


def nanochat_bytes(groups: list[dict], world: int) -> tuple[int, int]:
    """(state bytes per rank, bytes sent per rank per step) of nanochat's DistMuonAdamW, by design (it
    allocates ⌈K/N⌉ matrices of Muon buffers on every rank, so every rank holds the same)."""
    state = traffic = 0
    ring = 2 * (world - 1) / world
    for group in groups:
        params = group["params"]
        if group["kind"] == "muon":
            p = params[0]
            rows, cols = p.shape
            chunk = math.ceil(len(params) / world)
            state += chunk * (p.numel() + (rows if rows >= cols else cols)) * p.element_size()
            traffic += ring * chunk * world * p.numel() * p.element_size()
        else:
            for p in params:
                share = p.numel() if p.numel() < 1024 else p.numel() / world
                state += 2 * share * p.element_size()
                traffic += ring * p.numel() * p.element_size()
    return int(state), int(traffic)


def _step(model, preset: str, mode: str, rank: int = 0):
    """A FusedGate with ``preset`` over nanochat's groups after one step on random gradients."""
    from fusedgate import FusedGate, GateSpec

    opt = FusedGate(_groups(model), spec=getattr(GateSpec, preset)(), total_steps=100, distributed=mode)
    torch.manual_seed(1 + rank)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step(loss=torch.tensor(3.0 + rank))
    return opt


def baseline_bytes(depth: int, vocab: int) -> int:
    """Measured state bytes of the project's nanochat ``MuonAdamW`` after one step on the same groups."""
    from fusedgate.distributed import state_bytes
    from fusedgate.nanochat.muon import MuonAdamW

    model = _model(depth, vocab)
    opt = MuonAdamW(_groups(model))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    return state_bytes(opt)


def _worker(rank: int, world: int, store: str, depth: int, vocab: int, out: str, preset: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    from fusedgate.distributed import state_bytes

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    opt = _step(_model(depth, vocab), preset, "zero2", rank)
    sent = opt._sync.traffic_bytes(opt)
    dist.all_gather_object(everyone := [None] * world, (state_bytes(opt), sent))
    if rank == 0:
        torch.save(everyone, out)
    exit_rank(0)   # the result is on disk


def fsdp2_sent(depth: int, vocab: int, world: int, preset: str = "gated") -> int:
    """Bytes sent per rank per step by FusedGate's FSDP2 mode on ``world`` ranks, by design (the largest over
    the ranks of ``fusedgate.fsdp.traffic``: it reads only the groups' shapes and dtypes and the spec, so a
    plain single-process FusedGate over the same groups gives it, no processes needed)."""
    from fusedgate import FusedGate, GateSpec, fsdp

    opt = FusedGate(_groups(_model(depth, vocab)), spec=getattr(GateSpec, preset)(), total_steps=100)
    return int(max(fsdp.traffic(opt, world, rank) for rank in range(world)))


def measure(depth: int, vocab: int, world: int, preset: str = "gated") -> list[tuple[int, int]]:
    """[(state bytes, bytes sent per step)] per rank of a ``world``-rank FusedGate zero2 step."""
    if world == 1:
        from fusedgate.distributed import state_bytes

        return [(state_bytes(_step(_model(depth, vocab), preset, "auto")), 0)]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "bytes.pt")
        mp.start_processes(_worker, args=(world, os.path.join(folder, "store"), depth, vocab, out, preset),
                           nprocs=world, start_method="spawn")
        return torch.load(out)


def main(argv=None) -> None:
    parser = OneLineErrorParser(prog="python -m fusedgate.bench.distributed_bytes",
                                description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int_in(1, 64), default=4, help="GPT depth, 1 to 64 (default 4)")
    parser.add_argument("--vocab", type=int_in(2, 1 << 20), default=8192, help="vocabulary size (default 8192)")
    parser.add_argument("--worlds", type=int_in(1, 64), nargs="+", default=[1, 2, 3, 4],
                        help="process counts to measure, 1 to 64 each (default 1 2 3 4)")
    parser.add_argument("--presets", nargs="+", default=["nanochat", "gated"],
                        choices=["nanochat", "default", "gated", "muon", "adamw"], help="FusedGate presets")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = _model(args.depth, args.vocab)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"nanochat GPT depth {args.depth}, vocab {args.vocab}: {n_params:,} parameters "
          f"({n_params * 4 / 2**20:.1f} MiB fp32)")
    rows, mib = [], 2**20
    for preset in args.presets:
        for world in args.worlds:
            per_rank = measure(args.depth, args.vocab, world, preset)
            states = [s for s, _ in per_rank]
            nano_state, nano_sent = nanochat_bytes(_groups(model), world)
            if world == 1:
                nano_state = baseline_bytes(args.depth, args.vocab)
            rows.append([preset, world, f"{min(states) / n_params:.3f}–{max(states) / n_params:.3f}",
                         f"{nano_state / n_params:.3f}", f"{max(states) / nano_state:.3f}",
                         f"{max(s for _, s in per_rank) / mib:.2f}",
                         f"{fsdp2_sent(args.depth, args.vocab, world, preset) / mib:.2f}", f"{nano_sent / mib:.2f}"])
    print(markdown_table(["preset", "N", "FusedGate state B/param/rank (min–max)", "nanochat state B/param/rank",
                          "ratio (max)", "FusedGate ZeRO-2 sent/rank/step MiB", "FusedGate FSDP2 sent/rank/step MiB",
                          "nanochat sent/rank/step MiB"], rows))


if __name__ == "__main__":
    main()

"""``fusedgate train``: train a NanoChat model, or ``--compare`` optimizers on the same run.

    fusedgate train --preset tiny --compare          # baseline vs FusedGate (nanochat; gated default), 2 CPU cores
    fusedgate train --preset small --device cuda --optimizer fusedgate --spec my_spec.json
    fusedgate train --resume runs/tiny-baseline-...  # continue from the last checkpoint
    fusedgate train --resume runs/tiny-baseline-... --steps 600   # extend a run (a new schedule from here on)
    fusedgate train --preset tiny --compare --nproc 2  # data parallel: 2 processes (gloo on CPU, NCCL on CUDA)
    torchrun --nproc-per-node 8 -m fusedgate train --preset d20 --device cuda --optimizer fusedgate

Bad input is one line on stderr and exit code 2, before anything is trained or written. A flag is applied or
refused, never ignored: ``--spec`` implies ``--optimizer fusedgate`` and is refused for a run without it;
with ``--resume`` the flags that define the run must agree with the checkpoint (see ``--resume``'s help).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

from fusedgate.argtypes import integer, number_in
from fusedgate.files import WriteError
from fusedgate.nanochat.errors import TrainError
from fusedgate.nanochat.presets import PRESETS
from fusedgate.nanochat.train import OPTIMIZERS, TrainConfig
from fusedgate.spec import GateSpec, SpecError

MAX_THREADS = 1024
MAX_PROCESSES = 1024
MAX_LR_SCALE = 1000.0
DEFAULT_SPEC = "default"
# the main job: nanochat's optimizer, FusedGate as that same optimizer, and the gated default on top of it
DEFAULT_COMPARE = "baseline,fusedgate:nanochat,fusedgate:gated"


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds and ranges ("0-4,10"), at most 64, checked before any range is built."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, sep, hi = part.partition("-")
        try:
            lo, hi = int(lo), int(hi if sep else lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seeds like 0-4,10, got {text!r}") from None
        if lo < 0 or hi < lo or hi - lo + 1 + len(seeds) > 64:
            raise argparse.ArgumentTypeError(f"{text!r}: 1 to 64 non-negative seeds, ranges low-high")
        seeds += range(lo, hi + 1)
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct seeds")
    return seeds


def ratio_list(text: str) -> list[float]:
    """Comma-separated ladder ratios, finite, in [0.1, 10], including 1."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ratios like 0.8,0.9,1,1.15, got {text!r}") from None
    if not values or len(values) > 16 or not all(math.isfinite(v) and 0.1 <= v <= 10 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: 1 to 16 finite ratios in [0.1, 10]")
    if 1.0 not in values:
        raise argparse.ArgumentTypeError(f"{text!r}: the ladder includes 1 (the horizon itself)")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default tiny)")
    parser.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZERS)} (default baseline, or fusedgate "
                                            "when --spec is given)")
    parser.add_argument("--compare", nargs="?", const=DEFAULT_COMPARE, default=None, metavar="OPTS",
                        help="train several optimizers back to back and write a table and plot; entries are "
                             "optimizers or fusedgate:SPEC (default " + DEFAULT_COMPARE + ")")
    parser.add_argument("--spec", metavar="FILE",
                        help="GateSpec JSON file for FusedGate, or a preset name: default (nanochat's engine, "
                             "ungated; the default), gated (that engine with the gated policy), nanochat (the same "
                             "as default: exactly nanochat's MuonAdamW), muon (neutral: classic Muon), adamw. "
                             "Implies --optimizer fusedgate; refused for a run that trains no FusedGate")
    parser.add_argument("--steps", type=integer, help="training steps (default: the preset's; with --resume: "
                                                      "extend the checkpoint's run to this many steps)")
    parser.add_argument("--seed", type=integer, help="seed of the init and the batches (default 0)")
    parser.add_argument("--seeds", type=seed_list, metavar="LIST",
                        help="with --compare: compare on each of these seeds (e.g. 0-4), paired; writes summary.md "
                             "(default: the one --seed)")
    parser.add_argument("--ladder", type=ratio_list, metavar="RATIOS",
                        help="with --compare: also train the first entry at H/r steps for each ratio r (e.g. "
                             "0.8,0.9,1,1.15) and report each entry's steps-equivalent ratio (default: no ladder)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, ... (default cpu)")
    parser.add_argument("--data", metavar="PATH",
                        help="text folder, parquet shard folder or file, or text file (default: python stdlib "
                             "sources)")
    parser.add_argument("--tokenizer", help="byte (default) or bpe:N (rustbpe-trained, N tokens)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default runs/<preset>-<what>-<time>)")
    parser.add_argument("--eval-every", type=integer, help="steps between validations (default: the preset's)")
    parser.add_argument("--checkpoint-every", type=integer,
                        help="steps between checkpoints (0: only at the end; default: the preset's)")
    parser.add_argument("--gate-log-every", type=integer, help="steps between FusedGate gate records (default 10)")
    parser.add_argument("--resume", metavar="CKPT",
                        help="checkpoint file or run directory to continue. --preset, --optimizer, --spec, "
                             "--seed, --data, --tokenizer and --lr-scale must match the checkpoint (refused "
                             "otherwise); --steps may extend the run; --device, --out, --compile and the "
                             "--*-every flags apply to the rest of the run (default: a fresh run)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--lr-scale", type=number_in(0, MAX_LR_SCALE, lo_open=True),
                        help=f"multiply every learning rate: a number above 0, at most {MAX_LR_SCALE:g} (default 1)")
    parser.add_argument("--threads", type=integer,
                        help="torch CPU threads (default on CPU: half the cores, 1 to 4; small models gain little "
                             "from more, and oversubscribed OpenMP threads are many times slower)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to already hold a run")
    parser.add_argument("--nproc", type=integer,
                        help="data-parallel processes on this machine (gloo on CPU; NCCL on CUDA, one GPU each): "
                             "each takes 1/N of every batch; FusedGate shards its state (ZeRO-2), the baseline and "
                             "AdamW run under DDP. Under torchrun leave it out (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def _optimizers(args: argparse.Namespace) -> list[str]:
    """The optimizers this invocation trains (before --resume, which takes the checkpoint's)."""
    if args.compare is not None:
        if args.optimizer is not None:
            raise TrainError("--optimizer does nothing with --compare: list the optimizers in --compare, "
                             "e.g. --compare baseline,fusedgate")
        entries = [o.strip() for o in args.compare.split(",") if o.strip()]
        if len(entries) < 2 or len(set(entries)) != len(entries):
            raise TrainError(f"--compare takes two or more distinct entries, got {args.compare!r}")
        return entries
    return [args.optimizer or ("fusedgate" if args.spec is not None else "baseline")]


def _check_spec_applies(args: argparse.Namespace, optimizers: list[str]) -> None:
    """--spec sets the spec of the plain ``fusedgate`` entries (``fusedgate:SPEC`` entries bring their own)."""
    if args.spec is not None and "fusedgate" not in optimizers:
        fix = "add fusedgate to --compare" if args.compare is not None else "use --optimizer fusedgate"
        raise TrainError(f"--spec applies to FusedGate only and this run trains {', '.join(optimizers)}: "
                         f"{fix}, or drop --spec")


def _load_spec(name_or_file: str) -> GateSpec:
    try:
        return GateSpec.from_name_or_file(name_or_file)
    except SpecError as exc:
        raise TrainError(f"--spec {name_or_file}: {exc}") from None


def _fresh_config(args: argparse.Namespace) -> TrainConfig:
    optimizers = _optimizers(args)
    _check_spec_applies(args, optimizers)
    spec = _load_spec(args.spec or DEFAULT_SPEC) if "fusedgate" in optimizers else None
    preset = args.preset or "tiny"
    what = "compare" if args.compare is not None else optimizers[0]
    out = args.out or str(Path("runs") / f"{preset}-{what}-{time.strftime('%Y%m%d-%H%M%S')}")
    return TrainConfig(preset=preset, optimizer=optimizers[0].partition(":")[0], spec=spec, steps=args.steps,
                       seed=0 if args.seed is None else args.seed, device=args.device, data=args.data, out_dir=out,
                       eval_every=args.eval_every, progress=not args.no_progress,
                       gate_log_every=10 if args.gate_log_every is None else args.gate_log_every,
                       tokenizer=args.tokenizer or "byte", compile=args.compile,
                       checkpoint_every=args.checkpoint_every, lr_scale=1.0 if args.lr_scale is None else args.lr_scale,
                       overwrite=args.overwrite)


# flags that define the run: given with --resume, they replace the checkpoint's values and ``train`` refuses the
# resume unless the result still matches the checkpoint (steps: only a longer run)
RUN_FLAGS = ("preset", "optimizer", "seed", "data", "tokenizer", "lr_scale", "steps")
# flags that only change how the rest of the run is executed or logged
EXECUTION_FLAGS = ("eval_every", "checkpoint_every", "gate_log_every")


def _resumed_config(args: argparse.Namespace) -> TrainConfig:
    from fusedgate.nanochat.checkpoint import load_checkpoint, resolve

    if args.compare is not None:
        raise TrainError("--compare cannot --resume: resume each run directory of the comparison on its own")
    if args.overwrite:
        raise TrainError("--overwrite does nothing with --resume: a resumed run continues its own metrics")
    saved = dict(load_checkpoint(args.resume)["config"])
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TrainError(f"checkpoint {args.resume} has config fields this fusedgate does not know: "
                         f"{', '.join(unknown)}")
    saved["spec"] = GateSpec.from_dict(saved["spec"]) if saved.get("spec") else None
    changes = {name: getattr(args, name) for name in RUN_FLAGS + EXECUTION_FLAGS if getattr(args, name) is not None}
    _check_spec_applies(args, [changes.get("optimizer", saved.get("optimizer", "baseline"))])
    if args.spec is not None:
        changes["spec"] = _load_spec(args.spec)
    if args.compile:
        changes["compile"] = True
    out = args.out or str(resolve(args.resume).parent)
    return dataclasses.replace(TrainConfig(**saved), **changes, resume=args.resume, out_dir=out, device=args.device,
                               progress=not args.no_progress, stop_at=None)


def wall_text(result) -> str:
    """The run's train wall time and this call's total; after a resume the run's train wall includes the calls
    before this one, so this call's own share is named (else "train wall 26.3s (total 24.5s)" reads wrong)."""
    if not result.resumed_wall_s:
        return f"train wall {result.wall_s:.1f}s (total {result.total_s:.1f}s)"
    return (f"train wall {result.wall_s:.1f}s over the whole run, {result.wall_s - result.resumed_wall_s:.1f}s of "
            f"it in this call (this call's total {result.total_s:.1f}s)")


def _print_run(result) -> None:
    print(f"{result.config.optimizer}: final val bpb {result.final_val_bpb:.4f} after {result.steps_done} steps, "
          f"{wall_text(result)}, {result.tokens_per_s:,.0f} tokens/s, corpus {result.corpus_fingerprint}")


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: check the run here, then start N processes that each run this command as one rank."""
    import torch
    import torch.multiprocessing as mp

    try:
        config = _resumed_config(args) if args.resume else _fresh_config(args)
        batch = PRESETS[config.preset].batch_size if config.preset in PRESETS else 0
        if batch % args.nproc:
            raise TrainError(f"--nproc {args.nproc} does not divide the {config.preset} preset's batch of {batch} "
                             "rows: each process takes an equal share")
        if args.device != "cpu" and not args.device.startswith("cuda"):
            raise TrainError(f"--nproc runs on cpu (gloo) or cuda (NCCL), not {args.device}")
        if args.device.startswith("cuda") and ":" in args.device:
            raise TrainError("--nproc on CUDA uses cuda:0..N-1, one per process: pass --device cuda")
        if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
            raise TrainError(f"--nproc {args.nproc} needs {args.nproc} CUDA devices, this machine has "
                             f"{torch.cuda.device_count()}")
    except (TrainError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    child = argparse.Namespace(**{**vars(args), "out": config.out_dir, "nproc": None})  # one folder name for all
    try:
        mp.start_processes(_rank_main, args=(child, args.nproc, _free_port()), nprocs=args.nproc,
                           start_method="spawn")
    except mp.ProcessExitedException as exc:   # the rank printed its error; the others were stopped
        return exc.exit_code if exc.exit_code > 0 else 1
    except mp.ProcessRaisedException as exc:
        print(f"error: a training process failed: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, args: argparse.Namespace, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from fusedgate.ranks import exit_rank

    exit_rank(main(args))


def _join_process_group(args: argparse.Namespace) -> int:
    """Under ``--nproc`` or torchrun (WORLD_SIZE > 1 in the environment): join the process group; the world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 1
    import datetime

    import torch
    import torch.distributed as dist

    if args.device.startswith("cuda"):
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(torch.device(args.device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo", init_method="env://",
                                timeout=datetime.timedelta(minutes=10))
    if dist.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")   # rank 0 reports; errors still reach stderr
    return world


def main(args: argparse.Namespace) -> int:
    if args.nproc is not None and not 1 <= args.nproc <= MAX_PROCESSES:
        print(f"error: --nproc must be from 1 to {MAX_PROCESSES}, got {args.nproc}", file=sys.stderr)
        return 2
    if args.nproc is not None and args.nproc > 1:
        return _launch(args)
    try:
        world = _join_process_group(args)
        threads = args.threads
        if threads is not None and not 1 <= threads <= MAX_THREADS:
            raise TrainError(f"--threads must be from 1 to {MAX_THREADS}, got {threads}")
        if threads is None and not args.device.startswith("cuda"):   # the cores shared by the ranks
            threads = min(4, max(1, (os.cpu_count() or 2) // 2 // world))
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        config = _resumed_config(args) if args.resume else _fresh_config(args)
        if args.compare is not None and (args.seeds or args.ladder):
            from fusedgate.nanochat.seeds_compare import compare_seeds, summary_table

            if args.seeds and args.seed is not None:
                raise TrainError("--seed and --seeds: give one of them")
            seeds = args.seeds or [config.seed]
            summary = compare_seeds(config, _optimizers(args), seeds, args.ladder)
            print()
            print(summary_table(summary))
            print(f"\nper-seed reports in {config.out_dir}/seed-*/; summary in {config.out_dir}/summary.md")
            return 0
        if args.seeds or args.ladder:
            raise TrainError("--seeds and --ladder apply to --compare")
        if args.compare is not None:
            from fusedgate.nanochat.compare import compare, table

            results = compare(config, _optimizers(args))
            print()
            print(table(results))
            print(f"\ncorpus {results[0].corpus_fingerprint}; report and plot in {config.out_dir}/compare.md, "
                  f"{config.out_dir}/compare.png")
        else:
            from fusedgate.nanochat.plots import plot_runs
            from fusedgate.nanochat.train import train

            results = [train(config)]
            _print_run(results[0])
            if config.out_dir is not None and os.environ.get("RANK", "0") == "0":
                plot_runs(results, Path(config.out_dir) / "val_bpb.png", title=results[0].corpus_fingerprint)
                print(f"metrics, checkpoint and plot in {config.out_dir}")
    except (TrainError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WriteError as exc:  # the disk filled up or the folder changed during the run
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint (if any) is kept in the out dir", file=sys.stderr)
        return 130
    failed = [r for r in results if r.diverged]
    for r in failed:
        print(f"error: {r.config.optimizer}: {r.message}", file=sys.stderr)
    return 1 if failed else 0

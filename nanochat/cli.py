"""``fusedgate train``: train a NanoChat model, or ``--compare`` optimizers on the same run.

    fusedgate train --preset tiny --compare          # baseline vs FusedGate on 2 CPU cores
    fusedgate train --preset small --device cuda --optimizer fusedgate --spec my_spec.json
    fusedgate train --resume runs/tiny-baseline-...  # continue from the last checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from fusedgate.nanochat.errors import TrainError
from fusedgate.nanochat.presets import PRESETS
from fusedgate.nanochat.train import OPTIMIZERS, TrainConfig
from fusedgate.spec import GateSpec, SpecError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)} (default tiny)")
    parser.add_argument("--optimizer", default="baseline", help=f"one of {', '.join(OPTIMIZERS)}")
    parser.add_argument("--compare", nargs="?", const="baseline,fusedgate", default=None, metavar="OPTS",
                        help="train several optimizers back to back (default baseline,fusedgate) and "
                             "write a table and plot")
    parser.add_argument("--spec", metavar="FILE", default="default",
                        help="GateSpec JSON file for FusedGate, or a preset name: default (the gated starting "
                             "point; the default), muon (neutral: classic Muon), adamw")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--data", metavar="PATH",
                        help="text folder, parquet shard folder or text file (default: python stdlib sources)")
    parser.add_argument("--tokenizer", default="byte", help="byte (default) or bpe:N (rustbpe-trained, N tokens)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default runs/<preset>-<what>-<time>)")
    parser.add_argument("--eval-every", type=int, help="steps between validations (default: the preset's)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: only at the end)")
    parser.add_argument("--gate-log-every", type=int, default=10, help="steps between FusedGate gate records")
    parser.add_argument("--resume", metavar="CKPT", help="checkpoint file or run directory to continue")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--lr-scale", type=float, default=1.0, help="multiply every learning rate")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default on CPU: half the cores, 1 to 4; small models gain little "
                             "from more, and oversubscribed OpenMP threads are many times slower)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to already hold a run")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    spec = GateSpec.from_name_or_file(args.spec)
    if args.resume:
        from fusedgate.nanochat.checkpoint import load_checkpoint, resolve

        saved = load_checkpoint(args.resume)["config"]
        saved["spec"] = GateSpec.from_dict(saved["spec"]) if saved.get("spec") else None
        out = args.out or str(resolve(args.resume).parent)
        return dataclasses.replace(TrainConfig(**saved), resume=args.resume, out_dir=out, device=args.device,
                                   progress=not args.no_progress, stop_at=None)
    what = "compare" if args.compare else args.optimizer
    out = args.out or str(Path("runs") / f"{args.preset}-{what}-{time.strftime('%Y%m%d-%H%M%S')}")
    return TrainConfig(preset=args.preset, optimizer=args.optimizer, spec=spec, steps=args.steps, seed=args.seed,
                       device=args.device, data=args.data, out_dir=out, eval_every=args.eval_every,
                       progress=not args.no_progress, gate_log_every=args.gate_log_every, tokenizer=args.tokenizer,
                       compile=args.compile, checkpoint_every=args.checkpoint_every, lr_scale=args.lr_scale,
                       overwrite=args.overwrite)


def _print_run(result) -> None:
    print(f"{result.config.optimizer}: final val bpb {result.final_val_bpb:.4f} after {result.steps_done} steps, "
          f"train wall {result.wall_s:.1f}s (total {result.total_s:.1f}s), {result.tokens_per_s:,.0f} tokens/s, "
          f"corpus {result.corpus_fingerprint}")


def main(args: argparse.Namespace) -> int:
    threads = args.threads
    if threads is None and not args.device.startswith("cuda"):
        threads = min(4, max(1, (os.cpu_count() or 2) // 2))
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    try:
        config = _config_from_args(args)
        if args.compare:
            from fusedgate.nanochat.compare import compare, table

            results = compare(config, [o.strip() for o in args.compare.split(",") if o.strip()])
            print()
            print(table(results))
            print(f"\ncorpus {results[0].corpus_fingerprint}; report and plot in {config.out_dir}/compare.md, "
                  f"{config.out_dir}/compare.png")
        else:
            from fusedgate.nanochat.plots import plot_runs
            from fusedgate.nanochat.train import train

            results = [train(config)]
            _print_run(results[0])
            if config.out_dir is not None:
                plot_runs(results, Path(config.out_dir) / "val_bpb.png", title=results[0].corpus_fingerprint)
                print(f"metrics, checkpoint and plot in {config.out_dir}")
    except (TrainError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint (if any) is kept in the out dir", file=sys.stderr)
        return 130
    failed = [r for r in results if r.diverged]
    for r in failed:
        print(f"error: {r.config.optimizer}: {r.message}", file=sys.stderr)
    return 1 if failed else 0

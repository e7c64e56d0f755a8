"""The ``fusedgate`` command line.

Each subcommand lives in its own module, imported only when that subcommand runs, so
``fusedgate --version`` never pays for torch or Triton. A subcommand module provides

    add_arguments(parser: argparse.ArgumentParser) -> None
    main(args: argparse.Namespace) -> int | None

Usage errors are one line on stderr and exit code 2, for argparse's own errors too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fusedgate import __version__

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "spec": ("fusedgate.spec_cli", "show or validate a GateSpec JSON file"),
    "train": ("fusedgate.nanochat.cli", "train a NanoChat model (baseline, FusedGate or AdamW)"),
    "search": ("fusedgate.search.cli", "evolutionary search over the spec DSL"),
    "brain-eval": ("fusedgate.brain.eval", "evaluate OptBrain against its base optimizers"),
    "bench": ("fusedgate.bench.cli", "benchmark FusedGate against torch's fused AdamW"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: message (see prog --help)``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {shorten(message)} (see {self.prog} --help)\n")


def shorten(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _chosen_subcommand(argv: list[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in SUBCOMMANDS else None
    return None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="fusedgate", description="Training-phase-aware optimizer tools.")
    parser.add_argument("--version", action="version", version=f"fusedgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen_subcommand(argv)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)  # a usage error exits here: one line, SystemExit(2)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    code = args._run(args)
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())

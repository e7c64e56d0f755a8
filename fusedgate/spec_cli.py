"""``fusedgate spec show|validate FILE``: print or check a GateSpec JSON file."""

from __future__ import annotations

import sys

from fusedgate.spec import GateSpec, SpecError

PRESETS = {"default": GateSpec.default, "adamw": GateSpec.adamw, "muon": GateSpec.muon}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print a spec file (or a preset) as canonical JSON")
    show.add_argument("file", help=f"a spec JSON file, or a preset name: {', '.join(PRESETS)}")
    validate = sub.add_parser("validate", help="check a spec file against the DSL bounds")
    validate.add_argument("file")


def _load(name: str) -> GateSpec:
    return PRESETS[name]() if name in PRESETS else GateSpec.load(name)


def main(args) -> int:
    try:
        spec = _load(args.file)
    except SpecError as exc:
        print(f"fusedgate spec: {args.file}: {exc}", file=sys.stderr)
        return 1
    if args.spec_command == "show":
        print(spec.to_json())
    else:
        print(f"{args.file}: valid GateSpec v{spec.version} ({spec.units} units, hash {spec.content_hash()}, "
              f"{'inert gate' if spec.is_inert else 'gated'})")
    return 0

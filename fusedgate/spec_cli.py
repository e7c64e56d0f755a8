"""``fusedgate spec show|validate FILE``: print or check a GateSpec JSON file.

Exit codes: 0 ok; ``validate``: 1 when FILE is not a valid spec (its answer); ``show``: 2 when FILE is not a
valid spec (a usage error). Every error is one line naming the file and the problem.
"""

from __future__ import annotations

import sys

from fusedgate.spec import PRESET_NAMES, GateSpec, SpecError


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print a spec file (or a preset) as canonical JSON")
    show.add_argument("file", help=f"a spec JSON file, or a preset name: {', '.join(PRESET_NAMES)}")
    validate = sub.add_parser("validate", help="check a spec file against the DSL bounds")
    validate.add_argument("file", help="a spec JSON file (exit code 1 when it is not a valid spec)")


def main(args) -> int:
    try:
        spec = GateSpec.from_name_or_file(args.file)
    except SpecError as exc:
        print(f"fusedgate spec: {args.file}: {exc}", file=sys.stderr)
        return 1 if args.spec_command == "validate" else 2
    if args.spec_command == "show":
        print(spec.to_json())
    else:
        print(f"{args.file}: valid GateSpec v{spec.version} ({spec.units} units, hash {spec.content_hash()}, "
              f"{'inert gate' if spec.is_inert else 'gated'})")
    return 0

"""argparse ``type=`` functions for numbers a user types: bounded, finite, checked before anything is allocated.

    integer                      any integer of at most ``MAX_INT_DIGITS`` digits
    int_in(lo, hi)               an integer in [lo, hi]
    number_in(lo, hi, ...)       a finite float in [lo, hi] (or (lo, hi] with ``lo_open``): never nan or inf
    int_list(lo, hi, most)       "0,1,2", "0-4", "0-4,10": at most ``most`` distinct integers in [lo, hi];
                                 a range is sized before it is expanded, so ``0-1000000000`` costs nothing
    number_list(lo, hi, most)    comma-separated finite floats in [lo, hi]

Each raises ``argparse.ArgumentTypeError`` with the accepted range in the message, which argparse turns into
one line on stderr and exit code 2 (``fusedgate.cli.OneLineErrorParser``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

MAX_INT_DIGITS = 30  # far beyond any step count, seed or size; longer numbers are refused before conversion


def _shown(text: str, limit: int = 40) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def integer(text: str) -> int:
    """argparse type for an integer flag: refuses a number of more than ``MAX_INT_DIGITS`` digits before
    converting it (Python refuses over 4300, and a huge value only fails later, deep in torch)."""
    digits = text.strip().lstrip("+-")
    if digits.isdigit() and len(digits) > MAX_INT_DIGITS:
        raise argparse.ArgumentTypeError(f"a {len(digits)}-digit number is too large")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an integer") from None


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e18 else f"{x:g}"


def _range_text(lo: float, hi: float, lo_open: bool = False) -> str:
    if lo_open:
        return f"above {_num(lo)} and at most {_num(hi)}"
    return f"from {_num(lo)} to {_num(hi)}"


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        value = integer(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer {_range_text(lo, hi)}, got {_shown(text)}")
        return value

    parse.__name__ = "integer"
    return parse


def number_in(lo: float, hi: float, lo_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in [lo, hi], or (lo, hi] with ``lo_open``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a number") from None
        above = value > lo if lo_open else value >= lo
        if not (math.isfinite(value) and above and value <= hi):
            raise argparse.ArgumentTypeError(f"expected a finite number {_range_text(lo, hi, lo_open)}, "
                                             f"got {_shown(text)}")
        return value

    parse.__name__ = "number"
    return parse


def _int_items(text: str, lo: int, hi: int, most: int) -> list[int]:
    values: list[int] = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-") if not part.startswith("-") else (part, "", "")
        start = integer(first)
        stop = integer(last) if sep else start
        if not (lo <= start <= hi and lo <= stop <= hi):
            raise argparse.ArgumentTypeError(f"values must be from {lo:,} to {hi:,}, got {_shown(part)}")
        if stop < start:
            raise argparse.ArgumentTypeError(f"the range {_shown(part)} is empty (write it low-high)")
        if len(values) + stop - start + 1 > most:  # sized before range() expands it
            raise argparse.ArgumentTypeError(f"at most {most:,} values, got {_shown(text)} "
                                             f"({len(values) + stop - start + 1:,} or more)")
        values += range(start, stop + 1)
    return values


def int_list(lo: int, hi: int, most: int) -> Callable[[str], list[int]]:
    """argparse type: comma-separated integers and ranges ("0,1,2", "0-4", "0-4,10"), at most ``most``
    distinct values, each in [lo, hi]."""

    def parse(text: str) -> list[int]:
        values = _int_items(text, lo, hi, most)
        if not values:
            raise argparse.ArgumentTypeError("expected at least one integer")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"repeated values in {_shown(text)}")
        return values

    parse.__name__ = "integer list"
    return parse


def number_list(lo: float, hi: float, most: int, lo_open: bool = False) -> Callable[[str], list[float]]:
    """argparse type: comma-separated finite numbers in [lo, hi] (or (lo, hi]), at most ``most`` of them."""
    one = number_in(lo, hi, lo_open)

    def parse(text: str) -> list[float]:
        items = [x for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected at least one number")
        if len(items) > most:
            raise argparse.ArgumentTypeError(f"at most {most} numbers, got {len(items)}")
        return [one(x) for x in items]

    parse.__name__ = "number list"
    return parse

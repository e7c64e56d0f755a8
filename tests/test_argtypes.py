"""fusedgate.argtypes: bounded integers and finite numbers, and seed lists whose ranges are sized before they are
expanded (``0-1000000000`` is refused at once, with the limit in the message)."""

import argparse
import math
import subprocess
import sys

import pytest

from fusedgate.argtypes import int_in, int_list, integer, number_in, number_list


def refused(parse, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        parse(text)
    return str(caught.value)


def test_integers_in_bounds():
    assert integer("-3") == -3 and int_in(1, 10)("10") == 10
    assert "a 40-digit number is too large" in refused(integer, "9" * 40)
    assert refused(int_in(1, 1000), "0") == "expected an integer from 1 to 1,000, got '0'"
    assert refused(int_in(1, 1000), "True") == "'True' is not an integer"
    assert refused(int_in(1, 1000), "1e3") == "'1e3' is not an integer"


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_numbers_are_finite(text):
    assert "expected a finite number from 0 to 10" in refused(number_in(0, 10), text)


def test_number_bounds_and_lists():
    assert number_in(0, 10)("0") == 0.0 and number_in(0, 10, lo_open=True)("1e-3") == 1e-3
    assert refused(number_in(0, 100, lo_open=True), "0") == "expected a finite number above 0 and at most 100, got '0'"
    assert refused(number_in(0, 10), "ten") == "'ten' is not a number"
    assert number_list(0, 100, 3, lo_open=True)("0.5,1,2") == [0.5, 1.0, 2.0]
    assert "at most 3 numbers" in refused(number_list(0, 100, 3), "1,2,3,4")
    assert "finite" in refused(number_list(0, 100, 3), "1,nan")
    assert not any(math.isnan(v) for v in number_list(0, 100, 3)("1,2"))


def test_int_lists_and_ranges():
    seeds = int_list(0, 2**32 - 1, 1000)
    assert seeds("0-4,10") == [0, 1, 2, 3, 4, 10] and seeds(" 7 ") == [7]
    assert refused(seeds, "5-2") == "the range '5-2' is empty (write it low-high)"
    assert refused(seeds, "-1") == "values must be from 0 to 4,294,967,295, got '-1'"
    assert refused(seeds, "0,1,1") == "repeated values in '0,1,1'"
    assert refused(seeds, ",") == "expected at least one integer"
    assert refused(seeds, "a-b") == "'a' is not an integer"


PROBE = """
import argparse, resource
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY))  # expanding it would need ~40 GB
from fusedgate.argtypes import int_list
try:
    int_list(0, 2**32 - 1, 1000)({text!r})
except argparse.ArgumentTypeError as exc:
    print(exc)
"""


@pytest.mark.parametrize("text, message", [
    ("0-1000000000", "at most 1,000 values, got '0-1000000000' (1,000,000,001 or more)"),
    ("0-999,1000", "at most 1,000 values, got '0-999,1000' (1,001 or more)"),
])
def test_a_huge_range_is_refused_before_it_is_expanded(text, message):
    # in a subprocess capped at 1 GiB of address space: an implementation that expands the range first fails
    # there with a MemoryError instead of taking the machine's memory
    done = subprocess.run([sys.executable, "-c", PROBE.format(text=text)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == message, done.stderr[-500:]

"""Argument types of the command line: numbers are checked as they are parsed, so a bad value exits 2 with
argparse's usage line before any store, checkpoint or model is touched."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer, 0 or more, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def in_range(kind: type, low: float, high: float) -> Callable[[str], int | float]:
    """An argparse type for an int (`kind` int) or a number (float) from `low` to `high`, both included."""
    integer = kind is int

    def parse(text: str) -> int | float:
        value = _integer(text) if integer else _number(text)
        if not low <= value <= high:
            what = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"must be {what} from {low} to {high}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__}_from_{low}_to_{high}"
    return parse


def comma_list(convert, noun: str, check=None, bad: str = ""):
    """An argparse type for comma-separated values: each converted by `convert` (a ValueError means it is not
    one of the `noun`), at least one, and each passing `check` (else the message `bad`)."""

    def parse(text: str) -> list:
        try:
            values = [convert(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            values = None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}")
        if check is not None and not all(check(v) for v in values):
            raise argparse.ArgumentTypeError(f"{bad}, got {text!r}")
        return values

    parse.__name__ = f"{noun.replace(' ', '_')}_list"
    return parse


# Comma-separated integers, each 0 or more, e.g. '1,207,281'.
non_negative_int_list = comma_list(int, "integers", lambda v: v >= 0, "class ids must be 0 or more")

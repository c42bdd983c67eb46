"""Checks shared by the command-line tools, so a bad value ends in one clear message, never a traceback.

The ``*_int`` / ``*_float`` functions are ``argparse`` types (a bad value is a usage error, exit 2);
:func:`check_output_path` runs before any work starts; :func:`did_you_mean` suggests the closest name.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Iterable
from pathlib import Path


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def thread_count(text: str) -> int:
    """A thread count: -1 (automatic), 0 (the library's default) or a positive number."""
    value = _int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (auto), 0 (library default) or positive, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite number (no NaN or infinity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest known name, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_output_path(path: str | os.PathLike, *, is_file: bool) -> None:
    """Raise ``ValueError`` when ``path`` cannot be created: an existing directory where a file goes, a
    parent that is a file, or a parent directory that is not writable (permissions, read-only mount).

    Missing parent directories are fine when the nearest existing one is writable (they are created).
    """
    p = Path(path).absolute()
    if is_file and p.is_dir():
        raise ValueError(f"output {p} is a directory; give a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "is on a read-only file system" if read_only else "is not writable"
        raise ValueError(f"cannot write {p}: {parent} {why}")

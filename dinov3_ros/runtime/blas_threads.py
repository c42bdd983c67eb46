"""OpenBLAS thread count at run time, for every OpenBLAS the process has loaded (numpy's, scipy's).

With the model on a GPU the host's linear algebra is tiny (a 1200 x 8 QR, 8 x 8 eigen problems, small
products), and OpenBLAS's default of one thread per core can make each call wake and wait for pool threads
that compete for the cores with the node's own threads. Measured on the H100 host, one thread gave no
effect beyond run-to-run noise (BENCHMARKS.md, issue 6), so it is a knob, off by default.
``OPENBLAS_NUM_THREADS`` only acts before numpy is imported; this sets the count later, through each
library's exported setter.
"""

from __future__ import annotations

import ctypes
import logging

_LOG = logging.getLogger(__name__)

#: (setter, getter) symbol names of the OpenBLAS builds in use (plain, 64-bit interface, scipy-openblas)
_SYMBOLS = tuple(
    (f"{prefix}set_num_threads{suffix}", f"{prefix}get_num_threads{suffix}")
    for prefix in ("scipy_openblas_", "openblas_")
    for suffix in ("", "64_")
)

__all__ = ["blas_threads_for", "get_blas_threads", "loaded_openblas", "set_blas_threads"]


def loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux; ``[]`` elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    paths = {ln.split()[-1] for ln in lines if "openblas" in ln.lower() and ln.split()[-1].startswith("/")}
    return sorted(paths)


def _libraries() -> list[tuple[str, ctypes.CDLL, str, str]]:
    """``(path, library, setter, getter)`` of each loaded OpenBLAS that exports a thread setter."""
    import numpy  # noqa: F401  (load the libraries before looking for them)
    import scipy.linalg  # noqa: F401

    found = []
    for path in loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for setter, getter in _SYMBOLS:
            if hasattr(lib, setter):
                found.append((path, lib, setter, getter))
                break
    return found


def get_blas_threads() -> dict[str, int]:
    """``{library: threads}`` of every loaded OpenBLAS (-1 where the library has no getter)."""
    return {
        path: int(getattr(lib, getter)()) if hasattr(lib, getter) else -1
        for path, lib, _setter, getter in _libraries()
    }


def set_blas_threads(n: int) -> dict[str, tuple[int, int]]:
    """Set every loaded OpenBLAS to ``n`` threads (``n >= 1``); ``{library: (before, after)}``.

    numpy and scipy.linalg are imported first, so both of their libraries are covered.
    """
    if int(n) < 1:
        raise ValueError(f"BLAS threads must be >= 1, got {n}")
    done: dict[str, tuple[int, int]] = {}
    for path, lib, setter, getter in _libraries():
        set_fn, get_fn = getattr(lib, setter), getattr(lib, getter, None)
        set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
        before = int(get_fn()) if get_fn is not None else -1
        set_fn(int(n))
        done[path] = (before, int(get_fn()) if get_fn is not None else int(n))
    if not done:
        _LOG.debug("no OpenBLAS with a thread setter is loaded; BLAS threads left as they are")
    return done


def blas_threads_for(setting: int, device: str) -> int:
    """Resolve a ``blas_threads`` setting: ``-1`` (auto) = 1 with the model on CUDA, else 0; ``0`` = the
    library's default (leave it); ``N`` = N threads."""
    if setting < -1:
        raise ValueError(f"blas_threads must be -1 (auto), 0 (library default) or >= 1, got {setting}")
    if setting == -1:
        return 1 if str(device).startswith("cuda") else 0
    return int(setting)

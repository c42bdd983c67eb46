"""TensorRT and CUDA replaced at their boundary, in this process or a child process a test starts.

TensorRT cannot be installed here and there is no CUDA device: :func:`install` puts the strict fake
``tensorrt`` module (``_fake_tensorrt``) into ``sys.modules`` and replaces ``trt_backend._cuda_device``
- the one place that insists on a CUDA device - so a plan's I/O buffers live in host memory. Everything
else (parameters, launch mapping, ``load_model``, the node, the bag tool, the pipeline) is the real code.

``python tests/_trt_boundary.py -m MODULE ARGS...`` runs ``python -m MODULE ARGS...`` with the boundary
installed (the node, the lifecycle node and ``dinov3-ros`` in child processes).
"""

from __future__ import annotations

import runpy
import sys
from types import ModuleType

import _fake_tensorrt as fake


def install() -> ModuleType:
    """Install the fake ``tensorrt`` and host-memory buffers; returns the fake module."""
    import torch

    from dinov3_ros.runtime import trt_backend

    mod = fake.module()
    sys.modules["tensorrt"] = mod
    trt_backend._cuda_device = lambda device: torch.device("cpu")
    return mod


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: python tests/_trt_boundary.py -m MODULE [ARGS...]")
    install()
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

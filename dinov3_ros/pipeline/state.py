"""Per-source pipeline state as plain data (JSON + numeric arrays), for checkpoints and resume.

:func:`to_plain` turns the state (PCA bases, keyframes, object trackers: dataclasses, tensors and
arrays) into a JSON-able tree plus a dict of numeric arrays; :func:`from_plain` rebuilds it. Only the
classes the registered outputs declare (``Output.state_types``) and ``Geometry`` can be rebuilt, from
their attribute values: nothing in a saved state names code to run, and arrays are read with
``allow_pickle=False``. Dataclass fields marked ``metadata={"transient": True}`` (caches) are not saved;
a rebuilt object has their defaults.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinov3_ros.fsutil import atomic_write

_TAG = "$t"


def _classes() -> dict[str, type]:
    from dinov3_ros.pipeline.outputs import REGISTRY
    from dinov3_ros.runtime.preprocess import Geometry

    out = {f"{Geometry.__module__}:{Geometry.__qualname__}": Geometry}
    for o in REGISTRY.values():
        for cls in o.state_types:
            out[f"{cls.__module__}:{cls.__qualname__}"] = cls
    return out


def _attrs(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if not _transient(f)}
    return dict(vars(obj))


def _transient(f: dataclasses.Field) -> bool:
    """A dataclass field marked ``metadata={"transient": True}``: a cache, not saved (restored as its
    default)."""
    return bool(f.metadata.get("transient"))


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.known = {cls: name for name, cls in _classes().items()}

    def _array(self, a: np.ndarray) -> str:
        if a.dtype.hasobject:
            raise TypeError("pipeline state holds an object array; it cannot be saved as plain data")
        key = str(len(self.arrays))
        self.arrays[key] = np.array(a, copy=True, order="C")  # a snapshot: the state moves on
        return key

    def __call__(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, (list, tuple)):
            items = [self(v) for v in obj]
            return items if isinstance(obj, list) else {_TAG: "tuple", "v": items}
        if isinstance(obj, dict):
            if not all(isinstance(k, str) for k in obj):
                raise TypeError("pipeline state: dictionary keys must be strings")
            return {_TAG: "dict", "v": {k: self(v) for k, v in obj.items()}}
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu()
            host = t.float() if t.dtype == torch.bfloat16 else t
            return {
                _TAG: "tensor",
                "a": self._array(host.numpy()),
                "dtype": str(t.dtype),
                "dev": str(obj.device),
            }
        if isinstance(obj, np.ndarray):
            return {_TAG: "ndarray", "a": self._array(obj)}
        if isinstance(obj, np.generic):
            return {_TAG: "scalar", "dtype": obj.dtype.str, "v": obj.item()}
        name = self.known.get(type(obj))
        if name is None:
            raise TypeError(
                f"pipeline state holds a {type(obj).__qualname__}, which is not a declared state type"
            )
        return {_TAG: "obj", "cls": name, "v": {k: self(v) for k, v in _attrs(obj).items()}}


class _Decoder:
    def __init__(self, arrays: dict[str, np.ndarray], device: str) -> None:
        self.arrays, self.classes = arrays, _classes()
        self.device = torch.device(device)

    def _tensor(self, node: dict[str, Any]) -> torch.Tensor:
        dtype = getattr(torch, str(node["dtype"]).removeprefix("torch."))
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"saved state: unknown tensor dtype {node['dtype']!r}")
        t = torch.from_numpy(np.array(self.arrays[node["a"]])).to(dtype)
        return t.to(self.device) if str(node["dev"]).startswith("cuda") else t

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self(v) for v in node]
        if not isinstance(node, dict):
            return node
        tag = node.get(_TAG)
        if tag == "tuple":
            return tuple(self(v) for v in node["v"])
        if tag == "dict":
            return {k: self(v) for k, v in node["v"].items()}
        if tag == "tensor":
            return self._tensor(node)
        if tag == "ndarray":
            return np.array(self.arrays[node["a"]])
        if tag == "scalar":
            return np.dtype(node["dtype"]).type(node["v"])
        if tag == "obj":
            cls = self.classes.get(node["cls"])
            if cls is None:
                raise ValueError(f"saved state names {node['cls']!r}, which is not a declared state type")
            obj = cls.__new__(cls)
            for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
                if _transient(f):
                    object.__setattr__(obj, f.name, f.default)
            for k, v in node["v"].items():
                object.__setattr__(obj, k, self(v))
            return obj
        raise ValueError(f"saved state: unknown node {tag!r}")


def to_plain(state: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``(JSON-able tree, {key: numeric array})`` of ``state`` (``TypeError`` for undeclared types)."""
    enc = _Encoder()
    return enc(state), enc.arrays


def from_plain(tree: Any, arrays: dict[str, np.ndarray], device: str = "cpu") -> Any:
    """Rebuild what :func:`to_plain` encoded; CUDA tensors go to ``device`` (CPU ones stay)."""
    return _Decoder(arrays, device)(tree)


def save(path: str | Path, tree: Any, arrays: dict[str, np.ndarray]) -> None:
    """Write plain state (:func:`to_plain`) as ``<path>.npz`` then ``<path>.json``, each atomically."""
    p = Path(path)
    with atomic_write(p.with_suffix(".npz"), "wb") as f:
        np.savez(f, **arrays)
    with atomic_write(p.with_suffix(".json"), "w") as f:
        json.dump(tree, f)


def load(path: str | Path) -> tuple[Any, dict[str, np.ndarray]]:
    """Read what :func:`save` wrote: ``(tree, arrays)``; ``ValueError`` naming the file otherwise."""
    p = Path(path)
    try:
        tree = json.loads(p.with_suffix(".json").read_text())
        with np.load(p.with_suffix(".npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not a saved pipeline state ({exc})") from None
    return tree, arrays

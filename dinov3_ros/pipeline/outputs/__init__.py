"""The registry of outputs: every :class:`~.base.Output` subclass defined in a module of this package.

Node topics, the bag tool's topics, previews and the order heads run in all come from here, so a new
output is one new module (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.frames import FrameOutputs
from dinov3_ros.msgs.cdr import Parts
from dinov3_ros.pipeline.outputs.base import BatchContext, FrameJob, Output, Topic

__all__ = [
    "OUTPUTS",
    "REGISTRY",
    "BatchContext",
    "FrameJob",
    "Output",
    "Topic",
    "frame_messages",
    "resolve",
    "topic_types",
    "topics_of",
]


def _discover() -> dict[str, Output]:
    found: list[Output] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Output) and obj.__module__ == mod.__name__:
                found.append(obj())
    found.sort(key=lambda o: o.order)
    names = [o.name for o in found]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RuntimeError(f"outputs registered twice: {sorted(dup)}")
    reg = {o.name: o for o in found}
    for o in found:
        unknown = set(o.requires + o.uses) - set(reg)
        if unknown:
            raise RuntimeError(f"output {o.name!r} depends on unknown outputs {sorted(unknown)}")
    return reg


#: output name -> its head, in message order
REGISTRY: dict[str, Output] = _discover()
#: every output name, in message order
OUTPUTS: tuple[str, ...] = tuple(REGISTRY)


def resolve(outputs: Iterable[str]) -> frozenset[str]:
    """Validate output names (``ValueError`` names unknown ones); returns them plus what they require."""
    req = set(outputs)
    bad = sorted(req - set(REGISTRY))
    if bad:
        raise ValueError(f"unknown output(s) {bad}; known: {list(OUTPUTS)}")
    full, todo = set(), list(req)
    while todo:
        name = todo.pop()
        if name not in full:
            full.add(name)
            todo.extend(REGISTRY[name].requires)
    return frozenset(full)


def topics_of(names: Iterable[str]) -> list[str]:
    """Topic suffixes of outputs ``names``, in message order."""
    want = set(names)
    return [t.suffix for o in REGISTRY.values() if o.name in want for t in o.topics]


def topic_types() -> dict[str, str]:
    """Every topic suffix -> its message type."""
    return {t.suffix: t.msgtype for o in REGISTRY.values() for t in o.topics}


def frame_messages(
    out: FrameOutputs,
    cfg: PipelineConfig,
    topics: Iterable[str] | None = None,
    names: Iterable[str] | None = None,
) -> list[tuple[str, str, Parts]]:
    """``(topic suffix, msgtype, serialized parts)`` of a frame's computed outputs (restricted to
    ``topics`` and to outputs ``names`` when given), in message order, each with the input header."""
    want_t = None if topics is None else set(topics)
    want_n = None if names is None else set(names)
    msgs = []
    for o in REGISTRY.values():
        if o.name not in out.values or (want_n is not None and o.name not in want_n):
            continue
        value = out.values[o.name]
        for t in o.topics:
            if want_t is None or t.suffix in want_t:
                msgs.append((t.suffix, t.msgtype, t.serialize(out.stamp_ns, out.frame_id, value, cfg)))
    return msgs

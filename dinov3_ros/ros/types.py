"""``ros_types()``: the rclpy message-class provider for ``dinov3_ros.msgs`` builders."""

from __future__ import annotations

import importlib
from functools import lru_cache

import numpy as np

from dinov3_ros.msgs.provider import TypeProvider, u8_array


def _resolve(msgtype: str) -> type:
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise KeyError(f"message type {msgtype!r} is not importable with rclpy: {exc}") from exc


@lru_cache(maxsize=1)
def ros_types() -> TypeProvider:
    """Provider over the rclpy (rosidl-generated) message classes."""
    return TypeProvider(
        "rclpy",
        _resolve,
        u8=u8_array,
        f64=lambda a: np.asarray(a, dtype=np.float64).reshape(-1).tolist(),
        byte=lambda v: bytes([int(v)]),
    )

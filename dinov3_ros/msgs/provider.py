"""Type providers: one message-building code path for rclpy classes and rosbags dataclasses.

A provider resolves ``pkg/msg/Name`` to a class and converts array fields to what that class wants
(rclpy: ``array.array('B')`` for ``uint8[]`` - its native storage, taken without the per-element checks
that older rosidl setters (ROS 2 Humble) run on ``bytes`` - lists for float arrays, ``bytes`` for
``byte``; rosbags: numpy arrays and ints). Builders always pass *every* field, as rosbags requires, so
both paths serialise to identical CDR bytes. ``ros_types()`` (rclpy) lives in ``dinov3_ros.ros.types``; this module never
imports rclpy.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

import numpy as np


def u8_array(a: np.ndarray) -> array.array:
    """``a``'s bytes as an ``array.array('B')`` (one copy): what rosidl stores for ``uint8[]`` fields."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return out


class TypeProvider:
    """Message classes + array conversions of one ROS Python binding."""

    def __init__(
        self,
        name: str,
        resolve: Callable[[str], type],
        u8: Callable[[np.ndarray], Any],
        f64: Callable[[np.ndarray], Any],
        byte: Callable[[int], Any],
    ) -> None:
        self.name = name
        self._resolve = resolve
        self._cache: dict[str, type] = {}
        self.u8 = u8
        self.f64 = f64
        self.byte = byte

    def cls(self, msgtype: str) -> type:
        """The class of ``msgtype`` (``sensor_msgs/msg/Image``)."""
        c = self._cache.get(msgtype)
        if c is None:
            c = self._cache[msgtype] = self._resolve(msgtype)
        return c

    def new(self, msgtype: str, **fields: Any) -> Any:
        """Construct ``msgtype`` from keyword fields (callers pass all of them)."""
        return self.cls(msgtype)(**fields)

    def __repr__(self) -> str:
        return f"<TypeProvider {self.name}>"


def rosbags_types(typestore: Any) -> TypeProvider:
    """Provider for a rosbags typestore (``rosbags.typesys.get_typestore(Stores.ROS2_JAZZY)``)."""

    def resolve(msgtype: str) -> type:
        try:
            return typestore.types[msgtype]
        except KeyError as exc:
            raise KeyError(f"message type {msgtype!r} is not in the rosbags typestore") from exc

    return TypeProvider(
        "rosbags",
        resolve,
        u8=lambda a: np.ascontiguousarray(a).reshape(-1).view(np.uint8),
        f64=lambda a: np.asarray(a, dtype=np.float64).reshape(-1),
        byte=int,
    )

"""The bag tool's MCAP storage: rosbags' storage-writer protocol, without copying message data.

:class:`BagWriter` is ``rosbags.rosbag2.Writer`` with this storage registered for MCAP
(``Writer.STORAGE_PLUGINS``); everything else (connections, metadata, ``metadata.yaml``) is rosbags'.
:class:`McapStorage` writes the same bytes as rosbags' own MCAP storage (tests compare files) but takes
a message as one buffer *or a list of buffers* (the serialiser's zero-copy parts), keeps them by
reference in the open chunk and writes records with one ``os.writev`` per ~8 MB: a frame's dozen
messages cost one system call instead of many small GIL-releasing writes. :meth:`McapStorage.flush`
closes the open chunk and writes everything out (checkpoints call it, so a resumed run can re-cut
its chunks at the same places).
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionMode
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer

from dinov3_ros.msgs.cdr import Buffer, parts_len

MAGIC = b"\x89MCAP0\r\n"
CHUNK_BYTES = 1 << 20  # a chunk closes once it exceeds this (as rosbags does)
GATHER_BYTES = 8 << 20  # bytes gathered per write system call
_MSG = struct.Struct("<BQHIQQ")  # opcode 0x05, record length, channel id, sequence, log time, publish time


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def _record(op: int, body: bytes) -> bytes:
    return struct.pack("<BQ", op, len(body)) + body


class _Gather:
    """An open file written through ``os.writev`` of gathered buffers; ``tell`` counts what was given."""

    def __init__(self, path: Path) -> None:
        self.f = path.open("xb")
        self.parts: list[Any] = []
        self.n = 0
        self.pos = 0

    def add(self, b: Any) -> None:
        self.parts.append(b)
        k = memoryview(b).nbytes
        self.n += k
        self.pos += k
        if self.n >= GATHER_BYTES or len(self.parts) >= 512:
            self.write_out()

    def write_out(self) -> None:
        views = [memoryview(p).cast("B") for p in self.parts]
        self.parts, self.n = [], 0
        fd, i = self.f.fileno(), 0
        while i < len(views):  # writev may write less than asked (signals, large batches)
            done = os.writev(fd, views[i : i + 512])
            while i < len(views) and done >= views[i].nbytes:
                done -= views[i].nbytes
                i += 1
            if done:
                views[i] = views[i][done:]

    def flush(self) -> None:
        if self.parts:
            self.write_out()
        self.f.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.f.close()


class _Chunk:
    """The open chunk: its records as buffers, message times and per-channel message offsets."""

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.size = 0
        self.start, self.end = 2**63 - 1, 0
        self.index: dict[int, list[tuple[int, int]]] = defaultdict(list)

    def add(self, b: Any) -> None:
        self.parts.append(b)
        self.size += memoryview(b).nbytes


class McapStorage:
    """rosbags ``StorageWriter`` for MCAP (uncompressed), see the module doc."""

    def __init__(self, path: Path, compression: CompressionMode) -> None:
        if compression != CompressionMode.NONE:
            raise ValueError("the bag tool's MCAP storage writes uncompressed bags only")
        self.path = path / f"{path.name}.mcap"
        self.out = _Gather(self.path)
        self.out.add(MAGIC)
        self.out.add(_record(0x01, _string("ros2") + _string(f"rosbags-{version('rosbags')}")))
        self.schemas: dict[str, int] = {}
        self.channels: list[bytes] = []
        self.schema_records: list[bytes] = []
        self.chunk_index: list[bytes] = []
        self.chunk = _Chunk()
        self.start, self.end = 2**63 - 1, 0
        self.counts: dict[int, int] = {}

    def add_msgtype(self, connection: Any) -> None:
        enc = "ros2msg" if connection.msgdef.format == MessageDefinitionFormat.MSG else "ros2idl"
        sid = len(self.schemas) + 1
        self.schemas[connection.msgtype] = sid
        body = (
            struct.pack("<H", sid)
            + _string(connection.msgtype)
            + _string(enc)
            + _string(connection.msgdef.data)
        )
        self.schema_records.append(_record(0x03, body))
        self.chunk.add(self.schema_records[-1])

    def add_connection(self, connection: Any, offered_qos_profiles: str) -> None:
        meta = _string("offered_qos_profiles") + _string(offered_qos_profiles)
        body = struct.pack("<HH", connection.id, self.schemas[connection.msgtype])
        body += _string(connection.topic) + _string(connection.ext.serialization_format)
        body += struct.pack("<I", len(meta)) + meta
        self.channels.append(_record(0x04, body))
        self.counts[connection.id] = 0
        self.chunk.add(self.channels[-1])

    def write(self, connection: Any, timestamp: int, data: Buffer | Sequence[Buffer]) -> None:
        """Append one message (a buffer or a list of buffers, kept by reference: do not modify them)."""
        t = int(timestamp)
        parts = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
        ch = self.chunk
        self.start, self.end = min(t, self.start), max(t, self.end)
        ch.start, ch.end = min(t, ch.start), max(t, ch.end)
        self.counts[connection.id] += 1
        ch.index[connection.id].append((t, ch.size))
        ch.add(_MSG.pack(0x05, 22 + parts_len(parts), connection.id, 0, t, t))
        for p in parts:
            n = memoryview(p).nbytes
            ch.add(
                p if isinstance(p, bytes) or n >= 4096 else bytes(p)
            )  # small views: their scratch is reused
        if ch.size > CHUNK_BYTES:
            self._close_chunk()

    def _close_chunk(self) -> None:
        ch, out = self.chunk, self.out
        head = struct.pack("<QQQIIQ", ch.start, ch.end, ch.size, 0, 0, ch.size)
        chunk_start = out.pos
        out.add(struct.pack("<BQ", 0x06, len(head) + ch.size) + head)
        for p in ch.parts:
            out.add(p)
        chunk_end = out.pos
        offsets = []
        for cid, msgs in ch.index.items():
            offsets.append((cid, out.pos))
            body = struct.pack("<HI", cid, len(msgs) * 16) + b"".join(
                struct.pack("<QQ", a, b) for a, b in msgs
            )
            out.add(_record(0x07, body))
        rec = struct.pack("<QQQQI", ch.start, ch.end, chunk_start, chunk_end - chunk_start, len(offsets) * 10)
        rec += b"".join(struct.pack("<HQ", cid, off) for cid, off in offsets)
        rec += struct.pack("<QIQQ", out.pos - chunk_end, 0, ch.size, ch.size)
        self.chunk_index.append(rec)
        self.chunk = _Chunk()

    def flush(self) -> int:
        """Close the open chunk and write everything to the OS; returns the file descriptor (for fsync)."""
        if self.chunk.size:
            self._close_chunk()
        self.out.flush()
        return self.out.f.fileno()

    def close(self, version: int, metadata: str) -> None:
        if self.chunk.size:
            self._close_chunk()
        out = self.out
        meta_start = out.pos
        sub = _string("serialized_metadata") + _string(metadata)
        out.add(_record(0x0C, _string("rosbag2") + struct.pack("<I", len(sub)) + sub))
        meta_end = out.pos
        out.add(_record(0x0F, struct.pack("<I", 0)))
        schema_start = out.pos
        for r in self.schema_records:
            out.add(r)
        channel_start = out.pos
        for r in self.channels:
            out.add(r)
        chunk_start = out.pos
        for r in self.chunk_index:
            out.add(_record(0x08, r))
        self._summary(meta_start, meta_end, schema_start, channel_start, chunk_start)
        out.close()

    def _summary(
        self, meta_start: int, meta_end: int, schema_start: int, channel_start: int, chunk_start: int
    ) -> None:
        out = self.out
        index_start = out.pos
        out.add(_record(0x0D, struct.pack("<QQ", meta_start, meta_end - meta_start) + _string("rosbag2")))
        stats_start = out.pos
        stats = struct.pack(
            "<QHIIII",
            sum(self.counts.values()),
            len(self.schemas),
            len(self.channels),
            0,
            1,
            len(self.chunk_index),
        )
        stats += struct.pack("<QQI", self.start, self.end, len(self.counts) * 10)
        stats += b"".join(struct.pack("<HQ", cid, n) for cid, n in sorted(self.counts.items()))
        out.add(_record(0x0B, stats))
        summary_start = out.pos
        for op, a, b in (
            (0x03, schema_start, channel_start),
            (0x04, channel_start, chunk_start),
            (0x08, chunk_start, index_start),
        ):
            if a != b:
                out.add(_record(0x0E, bytes([op]) + struct.pack("<QQ", a, b - a)))
        out.add(_record(0x0E, b"\x0d" + struct.pack("<QQ", index_start, stats_start - index_start)))
        out.add(_record(0x0E, b"\x0b" + struct.pack("<QQ", stats_start, summary_start - stats_start)))
        out.add(_record(0x02, struct.pack("<QQI", schema_start, summary_start, 0)))
        out.add(MAGIC)

    def abort(self) -> None:
        """Write out what was written so far (no index, no footer) and close."""
        try:
            self.out.flush()
        finally:
            self.out.f.close()


class BagWriter(Writer):
    """``rosbags.rosbag2.Writer`` with :class:`McapStorage` for MCAP (rosbags' SQLite storage as is)."""

    STORAGE_PLUGINS = {StoragePlugin.MCAP: McapStorage, StoragePlugin.SQLITE3: Sqlite3Writer}

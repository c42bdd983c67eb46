"""Tolerant sequential MCAP scanner: reads records front to back, stops cleanly at damage.

``rosbags`` refuses to open an MCAP file whose footer is missing (a truncated recording, or an
output whose writer was killed). This scanner needs no footer or summary: it walks the data section
record by record (descending into chunks), yields every complete schema, channel and message, and
raises :class:`McapDamagedError` with the byte offset of the first record that cannot be read. Opcode 0
is no record: zero bytes (blocks a crash left allocated but unwritten) are damage; a record longer than
the file (a garbled length) is read as far as the file goes.

Record layout (MCAP spec): ``opcode u8, length u64 LE, body``; strings are ``u32 length + utf8``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"\x89MCAP0\r\n"

OP_HEADER = 0x01
OP_FOOTER = 0x02
OP_SCHEMA = 0x03
OP_CHANNEL = 0x04
OP_MESSAGE = 0x05
OP_CHUNK = 0x06
OP_DATA_END = 0x0F
_ZEROS = "zero bytes where a record should start (blocks that were never written)"


class McapDamagedError(Exception):
    """The file cannot be read past ``offset``; everything before it was yielded."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: damaged MCAP data at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class McapSchema:
    id: int
    name: str
    encoding: str
    data: bytes


@dataclass(frozen=True)
class McapChannel:
    id: int
    schema_id: int
    topic: str
    message_encoding: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class McapMessage:
    channel_id: int
    sequence: int
    log_time: int
    publish_time: int
    data: bytes
    offset: int  # file offset of the record (of the enclosing chunk for chunked messages)


Record = McapSchema | McapChannel | McapMessage


class _Buf:
    """Cursor over a bytes object with bounds-checked little-endian reads."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"record body ends early (need {n} bytes at {self.pos}, have {len(self.data)})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        return bytes(self.take(self.u32())).decode("utf8")

    def rest(self) -> bytes:
        return bytes(self.take(len(self.data) - self.pos))


def _decompress(compression: str, data: bytes, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python 3.14
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        return zstd.decompress(data)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    raise ValueError(f"unsupported chunk compression {compression!r}")


def _parse(op: int, body: memoryview, offset: int) -> Record | None:
    b = _Buf(body)
    if op == OP_SCHEMA:
        sid = b.u16()
        name = b.string()
        enc = b.string()
        data = bytes(b.take(b.u32()))
        return McapSchema(sid, name, enc, data)
    if op == OP_CHANNEL:
        cid = b.u16()
        schema_id = b.u16()
        topic = b.string()
        enc = b.string()
        end = b.u32() + b.pos
        meta: dict[str, str] = {}
        while b.pos < end:
            k = b.string()
            meta[k] = b.string()
        return McapChannel(cid, schema_id, topic, enc, meta)
    if op == OP_MESSAGE:
        cid = b.u16()
        seq = b.u32()
        log_time = b.u64()
        pub = b.u64()
        return McapMessage(cid, seq, log_time, pub, b.rest(), offset)
    return None


def _records(
    buf: memoryview, base: int, path: Path, outer: int | None
) -> Iterator[tuple[int, int, memoryview]]:
    """Yield ``(opcode, offset, body)`` of the records packed in ``buf`` (a chunk's content)."""
    pos = 0
    while pos < len(buf):
        if pos + 9 > len(buf):
            raise McapDamagedError(path, outer if outer is not None else base + pos, "record header cut off")
        op = buf[pos]
        (length,) = struct.unpack("<Q", buf[pos + 1 : pos + 9])
        if op == 0:
            raise McapDamagedError(path, outer if outer is not None else base + pos, _ZEROS)
        if pos + 9 + length > len(buf):
            raise McapDamagedError(
                path,
                outer if outer is not None else base + pos,
                f"record 0x{op:02x} of {length} bytes cut off",
            )
        yield op, (outer if outer is not None else base + pos), buf[pos + 9 : pos + 9 + length]
        pos += 9 + length


def _salvage_chunk(path: Path, offset: int, body: bytes, length: int) -> Iterator[Record]:
    """Yield the complete records at the start of a cut, uncompressed chunk; raise at the first cut one."""
    b = _Buf(body)
    try:
        b.u64(), b.u64(), b.u64(), b.u32()
        comp = b.string()
        b.u64()
    except ValueError:
        return
    if comp != "":
        return  # a compressed chunk cannot be read in part
    start = offset + 9 + b.pos
    inner = memoryview(body)[b.pos :]
    pos = 0
    while pos + 9 <= len(inner):
        op = inner[pos]
        (n,) = struct.unpack("<Q", inner[pos + 1 : pos + 9])
        if op == 0 or pos + 9 + n > len(inner):
            break
        try:
            rec = _parse(op, inner[pos + 9 : pos + 9 + n], start + pos)
        except (ValueError, UnicodeDecodeError):
            break
        if rec is not None:
            yield rec
        pos += 9 + n
    raise McapDamagedError(
        path, start + pos, f"chunk at byte {offset} ({length} bytes) is cut off after {len(body)} bytes"
    )


def scan(path: str | Path) -> Iterator[Record]:
    """Yield the schemas, channels and messages of an MCAP file in file order.

    Raises :class:`McapDamagedError` at the first unreadable record (after yielding all earlier ones) and
    a plain ``McapDamagedError`` at offset 0 for a file that is not MCAP at all. A file that simply ends
    after a complete record (no footer) ends the iteration only through ``McapDamagedError`` too, with the
    reason ``"file ends without footer"``, so callers can tell a complete file from a cut one.
    """
    path = Path(path)
    with path.open("rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if head != MAGIC:
            raise McapDamagedError(path, 0, "not an MCAP file (bad magic)")
        while True:
            offset = f.tell()
            hdr = f.read(9)
            if len(hdr) == 0:
                raise McapDamagedError(path, offset, "file ends without footer")
            if len(hdr) < 9:
                raise McapDamagedError(path, offset, "record header cut off")
            op = hdr[0]
            (length,) = struct.unpack("<Q", hdr[1:])
            if op in (OP_FOOTER, OP_DATA_END):
                return
            if op == 0:
                raise McapDamagedError(path, offset, _ZEROS)
            body = f.read(min(length, file_size - offset - 9))  # a cut or garbled length reads what is there
            if len(body) < length:
                if op == OP_CHUNK:
                    yield from _salvage_chunk(path, offset, body, length)
                raise McapDamagedError(path, offset, f"record 0x{op:02x} of {length} bytes cut off")
            if op == OP_CHUNK:
                try:
                    b = _Buf(body)
                    b.u64(), b.u64()
                    size = b.u64()
                    b.u32()
                    comp = b.string()
                    payload = bytes(b.take(b.u64()))
                    inner = memoryview(_decompress(comp, payload, size))
                except Exception as err:  # noqa: BLE001 - any decode failure is damage
                    raise McapDamagedError(path, offset, f"unreadable chunk: {err}") from None
                for iop, ioff, ibody in _records(inner, 0, path, offset):
                    try:
                        rec = _parse(iop, ibody, ioff)
                    except (ValueError, UnicodeDecodeError) as err:
                        raise McapDamagedError(
                            path, offset, f"corrupt record 0x{iop:02x} in chunk: {err}"
                        ) from None
                    if rec is not None:
                        yield rec
                continue
            try:
                rec = _parse(op, memoryview(body), offset)
            except (ValueError, UnicodeDecodeError) as err:
                raise McapDamagedError(path, offset, f"corrupt record 0x{op:02x}: {err}") from None
            if rec is not None:
                yield rec

"""The tolerant MCAP scanner against rosbags' own reader, on complete and cut files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from dinov3_ros.offline.mcap_scan import McapChannel, McapDamagedError, McapMessage, McapSchema, scan

TS = get_typestore(Stores.LATEST)


def _bag(path: Path, n: int = 300) -> Path:
    Str = TS.types["std_msgs/msg/String"]
    Arr = TS.types["std_msgs/msg/UInt8MultiArray"]
    Lay = TS.types["std_msgs/msg/MultiArrayLayout"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        a = w.add_connection("/a", "std_msgs/msg/String", typestore=TS)
        b = w.add_connection("/b", "std_msgs/msg/UInt8MultiArray", typestore=TS)
        for i in range(n):
            w.write(a, 1000 + 2 * i, TS.serialize_cdr(Str(data=f"m{i}"), "std_msgs/msg/String"))
            payload = np.full(9000, i % 251, np.uint8)  # ~2.7 MB in total: several 1 MiB chunks
            msg = Arr(layout=Lay(dim=[], data_offset=0), data=payload)
            w.write(b, 1001 + 2 * i, TS.serialize_cdr(msg, "std_msgs/msg/UInt8MultiArray"))
    return path / f"{path.name}.mcap"


def test_scan_matches_rosbags_on_complete_file(tmp_path: Path) -> None:
    f = _bag(tmp_path / "b")
    recs = list(scan(f))
    chans = {r.id: r.topic for r in recs if isinstance(r, McapChannel)}
    assert sorted(r.name for r in recs if isinstance(r, McapSchema)) == [
        "std_msgs/msg/String",
        "std_msgs/msg/UInt8MultiArray",
    ]
    got = [(chans[r.channel_id], r.log_time, r.data) for r in recs if isinstance(r, McapMessage)]
    with Reader(f) as r:
        ref = [(c.topic, t, bytes(raw)) for c, t, raw in r.messages()]
    assert got == ref and len(got) == 600


def test_scan_of_cut_file_yields_prefix_then_names_offset(tmp_path: Path) -> None:
    f = _bag(tmp_path / "b")
    data = f.read_bytes()
    with Reader(f) as r:
        ref = [(t, bytes(raw)) for _c, t, raw in r.messages()]
    for frac in (0.3, 0.55, 0.97):
        cut = tmp_path / f"cut{frac}.mcap"
        cut.write_bytes(data[: int(len(data) * frac)])
        got = []
        with pytest.raises(McapDamagedError) as ei:
            for rec in scan(cut):
                if isinstance(rec, McapMessage):
                    got.append((rec.log_time, rec.data))
        assert 0 < len(got) < len(ref) and got == ref[: len(got)]
        assert 0 < ei.value.offset <= len(data) * frac
        assert str(cut) in str(ei.value) and "offset" in str(ei.value)
        with pytest.raises(Exception, match="magic"):  # rosbags itself cannot open it at all
            with Reader(cut):
                pass


def test_scan_rejects_non_mcap(tmp_path: Path) -> None:
    f = tmp_path / "x.mcap"
    f.write_bytes(b"not an mcap file at all")
    with pytest.raises(McapDamagedError, match="bad magic"):
        list(scan(f))


def _messages_until_damage(f: Path) -> tuple[list[tuple[int, bytes]], McapDamagedError]:
    got = []
    with pytest.raises(McapDamagedError) as ei:
        for rec in scan(f):
            if isinstance(rec, McapMessage):
                got.append((rec.log_time, rec.data))
    return got, ei.value


@pytest.mark.parametrize("where", ["between chunks", "inside a chunk"])
def test_scan_stops_at_a_zero_filled_gap(tmp_path: Path, where: str) -> None:
    """Zero bytes where records should be (blocks a crash left allocated but unwritten, e.g. on a file
    system that allocates before it writes): the scan yields the messages before them exactly, stops with
    ``McapDamagedError`` and reads nothing beyond them as records. (Zeros inside one message's payload
    cannot be told from data: the chunk CRC is 0, as rosbags writes it.)"""
    f = _bag(tmp_path / "b")
    data = bytearray(f.read_bytes())
    with Reader(f) as r:
        ref = [(t, bytes(raw)) for _c, t, raw in r.messages()]
    offs = _offsets_of_chunks(data)
    start = offs[1] if where == "between chunks" else offs[1] + 60_000
    data[start : start + 300_000] = bytes(300_000)
    (tmp_path / "gap.mcap").write_bytes(bytes(data))
    got, err = _messages_until_damage(tmp_path / "gap.mcap")
    before = _messages_before(f, start, tmp_path)
    assert 0 < before <= len(got) < len(ref) and got[:before] == ref[:before]
    assert err.offset <= start + 300_000
    if where == "between chunks":
        assert "zero bytes" in err.reason and err.offset == start and len(got) == before


def _messages_before(f: Path, end: int, tmp: Path) -> int:
    """How many messages of the intact file ``f`` lie wholly before byte ``end``."""
    cut = tmp / "prefix.mcap"
    cut.write_bytes(f.read_bytes()[:end])
    return len(_messages_until_damage(cut)[0])


def _offsets_of_chunks(data: bytes | bytearray) -> list[int]:
    """File offsets of the top-level chunk records (walking the records from the magic)."""
    import struct

    pos, out = 8, []
    while pos + 9 <= len(data) and data[pos] not in (0x02, 0x0F):
        if data[pos] == 0x06:
            out.append(pos)
        pos += 9 + struct.unpack("<Q", bytes(data[pos + 1 : pos + 9]))[0]
    return out


def test_scan_of_a_garbled_length_is_damage_not_a_crash(tmp_path: Path) -> None:
    """A chunk header whose length is garbage (up to 2**64 - 1) is read as far as the file goes: the
    messages before it come out exact, then ``McapDamagedError`` (not a MemoryError or OverflowError;
    negative control: the unmodified file scans to the end)."""
    import struct

    f = _bag(tmp_path / "b")
    data = bytearray(f.read_bytes())
    second = _offsets_of_chunks(data)[1]
    ref = [(r.log_time, r.data) for r in scan(f) if isinstance(r, McapMessage)]
    assert len(ref) == 600
    for length in (2**64 - 1, 2**63, len(data)):
        data[second + 1 : second + 9] = struct.pack("<Q", length)
        (tmp_path / "g.mcap").write_bytes(bytes(data))
        got, err = _messages_until_damage(tmp_path / "g.mcap")
        assert 0 < len(got) < 600 and got == ref[: len(got)] and err.offset >= second

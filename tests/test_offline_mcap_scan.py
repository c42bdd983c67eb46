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

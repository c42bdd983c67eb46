"""The bag tool's MCAP storage (rosbags' storage-writer protocol) writes exactly the bytes rosbags' own
MCAP storage writes, however messages are split into parts and however writes are gathered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from dinov3_ros.offline import bagout, storage
from dinov3_ros.offline.bagout import ConnKey, OutputBag

TS = get_typestore(Stores.LATEST)
TOPICS = (("/a", 90_000), ("/b", 400_000), ("/c", 17))


def _resolve(key: ConnKey) -> dict:
    msgdef = TS.generate_msgdef(key.msgtype, ros_version=2)[0]
    return {"msgdef": msgdef, "rihs01": TS.hash_rihs01(key.msgtype), "serialization_format": "cdr", "qos": ()}


def _messages() -> list[tuple[str, int, bytes]]:
    rng = np.random.default_rng(1)
    return [
        (topic, 1000 + i, rng.integers(0, 256, n + i, dtype=np.uint8).tobytes())
        for i in range(12)
        for topic, n in TOPICS
    ]


def _write_tool(out: Path, parts: bool) -> bytes:
    """Through OutputBag (the tool's storage); odd frames as lists of parts; a checkpoint cut at 6."""
    ob = OutputBag(out, resolve_conn=_resolve)
    ob.open()
    for k, (topic, t, data) in enumerate(_messages()):
        i = k // len(TOPICS)
        raw = [data[:5], memoryview(data)[5:]] if parts and i % 2 else data
        ob.write(ConnKey(topic, "sensor_msgs/msg/Image", "out"), t, raw)
        if k == 6 * len(TOPICS) + 2:
            ob.checkpoint({"frames": i}, None)  # a forced chunk cut
    ob.finalize({"k": "v"})
    return (out / f"{out.name}.mcap").read_bytes()


def _write_rosbags(out: Path) -> bytes:
    """The same messages through rosbags' own Writer and MCAP storage."""
    w = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
    w.open()
    conns: dict[str, object] = {}
    for k, (topic, t, data) in enumerate(_messages()):
        if topic not in conns:
            spec = _resolve(ConnKey(topic, "sensor_msgs/msg/Image", "out"))
            conns[topic] = w.add_connection(
                topic, "sensor_msgs/msg/Image", msgdef=spec["msgdef"], rihs01=spec["rihs01"]
            )
        w.write(conns[topic], t, data)
        if k == 6 * len(TOPICS) + 2:
            w.storage.close_chunk()
    w.set_custom_data("k", "v")
    w.set_custom_data("dinov3_ros.complete", "true")
    w.close()
    return (out / f"{out.name}.mcap").read_bytes()


@pytest.mark.parametrize("parts", [False, True])
def test_tool_storage_identical_to_rosbags(tmp_path: Path, parts: bool) -> None:
    (tmp_path / "ref").mkdir()
    ref = _write_rosbags(tmp_path / "ref" / "bag")  # the bag's name is inside the file: same name
    got = _write_tool(tmp_path / "bag", parts)
    assert len(ref) > 5_000_000 and got == ref


def test_tool_storage_differs_when_a_message_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: a storage that drops one byte of the last part no longer matches."""
    (tmp_path / "ref").mkdir()
    ref = _write_rosbags(tmp_path / "ref" / "bag")
    real = storage.McapStorage.write

    def lossy(self, connection, timestamp, data):
        data = [*data[:-1], bytes(data[-1])[:-1]] if isinstance(data, list) else data
        return real(self, connection, timestamp, data)

    monkeypatch.setattr(storage.McapStorage, "write", lossy)
    assert _write_tool(tmp_path / "bag", True) != ref


@pytest.mark.parametrize("gather", [0, 1000, 3_000_000])
def test_gathered_writes_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gather: int) -> None:
    """Records gathered into few ``os.writev`` calls (any gather size, partial writes resumed) land as the
    same file as one write per record."""
    import os

    (tmp_path / "ref").mkdir()
    (tmp_path / "gathered").mkdir()
    ref = _write_tool(tmp_path / "ref" / "bag", True)
    calls: list[int] = []
    real = os.writev

    def short_writev(fd: int, bufs: list) -> int:  # the kernel may take less than asked: at most 70 kB
        calls.append(len(bufs))
        head, left = [], 70_000
        for b in bufs:
            if left <= 0:
                break
            mv = memoryview(b)[:left]
            head.append(mv)
            left -= mv.nbytes
        return real(fd, head)

    monkeypatch.setattr(storage, "GATHER_BYTES", gather)
    monkeypatch.setattr(storage.os, "writev", short_writev)
    got = _write_tool(tmp_path / "gathered" / "bag", True)
    assert got == ref
    assert calls and max(calls) <= 512


def test_finalize_syncs_data_before_publishing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bag's files are fsynced after their last write and before the rename that makes OUT appear
    (a power cut then leaves no output rather than a truncated one that looks complete)."""
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(self: Path, target: Path) -> Path:
        events.append(("rename", str(target)))
        return real_rename(self, target)

    monkeypatch.setattr(bagout.os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    _write_tool(tmp_path / "bag", True)
    publish = events.index(("rename", str(tmp_path / "bag")))
    synced = {p for e, p in events[:publish] if e == "fsync"}
    assert any(p.endswith("bag.mcap") for p in synced) and any(p.endswith("metadata.yaml") for p in synced)

"""OutputBag's fast MCAP path writes exactly the bytes rosbags' own Writer.write writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags.rosbag2", reason="rosbags writes the output bags")


def _write(out: Path, fast: bool) -> bytes:
    from rosbags.typesys import Stores, get_typestore

    from dinov3_ros.offline.bagout import ConnKey, OutputBag

    ts = get_typestore(Stores.LATEST)

    def resolve(key: ConnKey) -> dict:
        msgdef = ts.generate_msgdef(key.msgtype, ros_version=2)[0]
        return {
            "msgdef": msgdef,
            "rihs01": ts.hash_rihs01(key.msgtype),
            "serialization_format": "cdr",
            "qos": (),
        }

    ob = OutputBag(out, resolve_conn=resolve)
    ob.open()
    assert ob._fast == fast
    rng = np.random.default_rng(1)
    for i in range(12):
        for topic, n in (("/a", 90_000), ("/b", 400_000 + i), ("/c", 17)):
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            raw = [data[:5], memoryview(data)[5:]] if fast and i % 2 else data  # parts or one buffer
            ob.write(ConnKey(topic, "sensor_msgs/msg/Image", "out"), 1000 + i, raw)
        if i == 6:
            ob.checkpoint({"frames": i}, None)  # a forced chunk cut
    ob.finalize({"k": "v"})
    return (out / f"{out.name}.mcap").read_bytes()


def test_fast_mcap_write_identical_to_rosbags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dinov3_ros.offline import bagout

    # the rosbags version in use keeps the attributes the fast path relies on
    fast = _write(tmp_path / "bag", True)
    (tmp_path / "fast").mkdir()
    (tmp_path / "bag").rename(tmp_path / "fast" / "bag")
    monkeypatch.setattr(bagout, "_fast_capable", lambda writer: False)  # rosbags' own Writer.write
    slow = _write(tmp_path / "bag", False)
    assert len(fast) > 5_000_000 and fast == slow


@pytest.mark.parametrize("gather", [0, 1000, 3_000_000])
def test_gathered_writes_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gather: int) -> None:
    """Records gathered into few ``os.writev`` calls (any gather size, partial writes resumed) land as the
    same file as one write per record."""
    import os

    from dinov3_ros.offline import bagout

    (tmp_path / "ref").mkdir()
    (tmp_path / "gathered").mkdir()
    ref = _write(tmp_path / "ref" / "bag", True)  # the bag's name is inside the file: same name
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

    monkeypatch.setattr(bagout, "GATHER_BYTES", gather)
    monkeypatch.setattr(bagout.os, "writev", short_writev)
    got = _write(tmp_path / "gathered" / "bag", True)
    assert got == ref
    assert calls and max(calls) <= 512


def test_finalize_syncs_data_before_publishing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bag's files are fsynced after their last write and before the rename that makes OUT appear
    (a power cut then leaves no output rather than a truncated one that looks complete)."""
    import os

    from dinov3_ros.offline import bagout

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
    _write(tmp_path / "bag", True)
    publish = events.index(("rename", str(tmp_path / "bag")))
    synced = {p for e, p in events[:publish] if e == "fsync"}
    assert any(p.endswith("bag.mcap") for p in synced) and any(p.endswith("metadata.yaml") for p in synced)

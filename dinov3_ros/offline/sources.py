"""Input readers for ``dinov3-ros process``: rosbag2 (dir, .mcap, .db3), ROS 1 .bag, videos, image folders.

Every source is opened read-only and yields :class:`InputMessage` records in a deterministic order
(bags: log-time order as stored; videos: frame order; folders: sorted file names). Image payloads
are *not* decoded here: decoding runs on worker threads (:func:`decode_message`). Damage in the
container (truncated file, unreadable chunk or page) raises :class:`InputCorruptError` naming the
file, topic and offset/timestamp, after every earlier message was yielded.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinov3_ros.core.camera import CameraIntrinsics, intrinsics_for_image

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
BAG_EXTS = (".mcap", ".db3", ".bag")
#: encodings of camera images: what ``dinov3-ros process`` takes by default (never depth, masks, floats)
CAMERA_ENCODINGS = frozenset(
    {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8uc3", "yuv422", "uyvy", "yuv422_yuy2", "yuyv"}
)


class InputError(ValueError):
    """An input that cannot be used (missing, unknown format, no image topic, ...)."""


class InputCorruptError(Exception):
    """Damaged input: everything before ``offset``/``timestamp`` was read; nothing after."""

    def __init__(
        self,
        file: str | Path,
        reason: str,
        *,
        topic: str | None = None,
        offset: int | None = None,
        timestamp_ns: int | None = None,
    ) -> None:
        where = [f"file {file}"]
        if topic:
            where.append(f"topic {topic}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        if timestamp_ns is not None:
            where.append(f"timestamp {timestamp_ns} ns")
        super().__init__(f"corrupt input ({', '.join(where)}): {reason}")
        self.file, self.topic, self.offset, self.timestamp_ns, self.reason = (
            str(file),
            topic,
            offset,
            timestamp_ns,
            reason,
        )


@dataclass(frozen=True)
class Calibration:
    """Intrinsics given on the command line or in a calibration YAML for videos and image folders:
    ``K`` (3x3) and, when known, the size it was calibrated at (``(0, 0)``: the images' own size)."""

    K: np.ndarray
    width: int = 0
    height: int = 0
    distortion_model: str = "plumb_bob"
    D: tuple[float, ...] = ()

    @staticmethod
    def pinhole(fx: float, fy: float, cx: float, cy: float, width: int = 0, height: int = 0) -> Calibration:
        return Calibration(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64), width, height)

    def for_image(self, width: int, height: int) -> CameraIntrinsics | None:
        """The intrinsics of a ``width`` x ``height`` image (the camera_info policy of
        ``core.camera.intrinsics_for_image`` when the calibration size is known)."""
        w, h = (self.width or width), (self.height or height)
        intr = CameraIntrinsics(
            self.K, w, h, np.asarray(self.D, np.float64), self.distortion_model or "plumb_bob"
        )
        return intrinsics_for_image(intr, width, height)[0]


@dataclass(frozen=True)
class ConnSpec:
    """An input connection, enough to recreate it in the output bag (``--copy-input``)."""

    topic: str
    msgtype: str
    msgdef: str
    msgdef_format: str  # "ros2msg" | "ros2idl"
    digest: str
    serialization_format: str
    qos: tuple[Any, ...] = ()


@dataclass
class InputMessage:
    """One input record in input order; ``kind`` is image|compressed|camera_info|frame|other."""

    seq: int
    topic: str
    log_ns: int
    kind: str
    conn: int = -1  # index into ``Source.connections`` (-1 for videos/folders)
    raw: bytes | memoryview | None = None  # serialized message (bags)
    offset: int | None = None  # byte offset in the file where known
    array: np.ndarray | None = None  # decoded BGR frame (videos) or None
    path: str | None = None  # image file (folders)
    stamp_ns: int = 0  # header stamp (videos/folders; bags take it from the message)
    frame_id: str = ""
    camera_info: CameraIntrinsics | None = None  # a bag's camera_info paired with an image
    calibration: Calibration | None = None  # video/folder intrinsics from the command line


@dataclass
class Source:
    """Base class of the input readers."""

    path: Path
    image_topics: list[str] = field(default_factory=list)
    connections: list[ConnSpec] = field(default_factory=list)
    fmt: str = ""

    def messages(self, copy_input: bool = False, skip_before: int = 0) -> Iterator[InputMessage]:
        """Yield the input in order; messages with ``seq < skip_before`` carry no payload."""
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles."""


# --------------------------------------------------------------------------- helpers


def camera_info_topic(image_topic: str) -> str:
    """``<base>/camera_info`` for ``<base>/image_raw`` or ``<base>/image_raw/compressed`` (ROS convention)."""
    t = image_topic
    for suffix in ("/compressed", "/compressedDepth", "/theora"):
        if t.endswith(suffix):
            t = t[: -len(suffix)]
            break
    base = t.rsplit("/", 1)[0] if "/" in t.strip("/") else ""
    return f"{base}/camera_info"


def calibration_from_yaml(path: str | Path) -> Calibration:
    """Read a ROS ``camera_calibration`` YAML (``camera_matrix.data``), a ``k``/``K`` list or a plain
    ``fx fy cx cy`` mapping (``InputError`` naming what is missing)."""
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"cannot read camera_info YAML {p}: {err}") from None
    if not isinstance(doc, dict):
        raise InputError(f"camera_info YAML {p}: expected a mapping")
    try:
        if "camera_matrix" in doc:
            k = np.asarray([float(v) for v in doc["camera_matrix"]["data"]]).reshape(3, 3)
            d = tuple(float(v) for v in (doc.get("distortion_coefficients") or {}).get("data", []))
            size = int(doc.get("image_width", 0)), int(doc.get("image_height", 0))
            return Calibration(k, *size, str(doc.get("distortion_model", "") or "plumb_bob"), d)
        if "k" in doc or "K" in doc:
            k = np.asarray([float(v) for v in doc.get("k", doc.get("K"))]).reshape(3, 3)
            return Calibration(k, int(doc.get("width", 0)), int(doc.get("height", 0)))
        vals = [float(doc[key]) for key in ("fx", "fy", "cx", "cy")]
    except KeyError as err:
        raise InputError(
            f"camera_info YAML {p}: missing {err} (need camera_matrix, k or fx/fy/cx/cy)"
        ) from None
    except (TypeError, ValueError) as err:
        raise InputError(f"camera_info YAML {p}: {err}") from None
    return Calibration.pinhole(*vals, int(doc.get("width", 0)), int(doc.get("height", 0)))


def _typestore_for(conns: Sequence[Any], ros1: bool) -> Any:
    """A typestore holding the definitions embedded in the bag (falls back to the stock store)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.LATEST)
    types: dict[str, Any] = {}
    for c in conns:
        if c.msgdef.format == MessageDefinitionFormat.MSG and c.msgdef.data:
            try:
                types.update(get_types_from_msg(c.msgdef.data, c.msgtype))
            except Exception:  # noqa: BLE001 - keep the stock definition
                continue
        elif c.msgdef.format == MessageDefinitionFormat.IDL and c.msgdef.data:
            sep = "=" * 80 + "\n"
            try:
                for part in (
                    c.msgdef.data.split(sep)[1:] if c.msgdef.data.startswith(sep) else [c.msgdef.data]
                ):
                    types.update(
                        get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part)
                    )
            except Exception:  # noqa: BLE001
                continue
    if types:
        fresh = {k: v for k, v in types.items() if k not in store.fielddefs}
        if fresh:
            store.register(fresh)
    return store


# --------------------------------------------------------------------------- bags


class BagSource(Source):
    """rosbag2 directory / .mcap / .db3 file, or a ROS 1 .bag file (read-only)."""

    def __init__(self, path: Path, topics: Sequence[str] | None = None) -> None:
        super().__init__(path=path)
        self.ros1 = path.suffix == ".bag"
        self._reader: Any = None
        self._fallback_files: list[Path] = []  # mcap files rosbags could not open (damaged)
        self._open_error: str | None = None
        self._conns: list[Any] = []
        self._open()
        self.typestore = _typestore_for(self._conns, self.ros1)
        self.fmt = "ros1" if self.ros1 else "rosbag2"
        self.connections = [self._spec(c) for c in self._conns]
        all_images = sorted({c.topic for c in self._conns if c.msgtype in IMAGE_TYPES})
        #: image topics left out by the default selection -> why (``--topics`` selects them explicitly)
        self.skipped_topics: dict[str, str] = {}
        if topics:
            missing = [t for t in topics if t not in all_images]
            if missing:
                raise InputError(
                    f"{path}: topic(s) {', '.join(missing)} not found as Image/CompressedImage; "
                    f"image topics in the bag: {', '.join(all_images) or 'none'}"
                )
            self.image_topics = list(dict.fromkeys(topics))
        else:
            self.image_topics, self.skipped_topics = self._camera_topics(all_images)
        if not self.image_topics:
            if self.skipped_topics:
                left = "; ".join(f"{t} ({why})" for t, why in self.skipped_topics.items())
                raise InputError(
                    f"{path}: no camera image topic (colour or mono8 Image, or CompressedImage); "
                    f"left out: {left}; choose topics with --topics"
                )
            raise InputError(f"{path}: no sensor_msgs/Image or CompressedImage topic in the bag")
        self.info_topics = {t: camera_info_topic(t) for t in self.image_topics}
        have = {c.topic for c in self._conns if c.msgtype == CAMERA_INFO_TYPE}
        self.info_topics = {t: ci for t, ci in self.info_topics.items() if ci in have}

    # -- default topic selection -------------------------------------------
    def _first_formats(self, topics: Sequence[str]) -> tuple[dict[str, str], bool]:
        """Encoding (Image) or format (CompressedImage) of each topic's first message; whether the
        whole bag was read without damage (a topic missing from a clean read has no messages)."""
        want = {i for i, c in enumerate(self._conns) if c.topic in topics and c.msgtype in IMAGE_TYPES}
        found: dict[str, str] = {}
        clean = True
        stream = self._raw_stream(want)
        try:
            for ci, _t, raw, _off in stream:
                c = self._conns[ci]
                if c.topic in found:
                    continue
                try:
                    msg = self.deserialize(raw, c.msgtype)
                    fmt = msg.encoding if c.msgtype == IMAGE_TYPES[0] else msg.format
                except Exception:  # noqa: BLE001 - a malformed first message: decided per frame later
                    fmt = "?"
                found[c.topic] = str(fmt)
                if len(found) == len(set(topics)):
                    break
        except InputCorruptError:
            clean = False
        finally:
            stream.close()
        return found, clean

    def _camera_topics(self, image_topics: list[str]) -> tuple[list[str], dict[str, str]]:
        """The camera image topics among ``image_topics`` and why each other one is left out.

        Camera images: Image topics whose first message has a colour or mono8 encoding, and
        CompressedImage topics other than ``compressedDepth``; a compressed topic is left out when
        its raw topic (``<raw>/compressed``) is taken, as both are the same camera.
        """
        formats, clean = self._first_formats(image_topics)
        types = {c.topic: c.msgtype for c in self._conns if c.topic in image_topics}
        keep: list[str] = []
        skipped: dict[str, str] = {}
        for t in image_topics:
            fmt = formats.get(t)
            if fmt is None:
                if clean:
                    skipped[t] = "no messages"
                else:
                    keep.append(t)  # unread before the damage: the run reports what it finds
            elif types[t] == IMAGE_TYPES[1]:
                if "compresseddepth" in (fmt + t).lower():
                    skipped[t] = f"compressed depth, format {fmt!r}"
                else:
                    keep.append(t)
            elif fmt.lower() in CAMERA_ENCODINGS:
                keep.append(t)
            else:
                skipped[t] = f"{fmt}: not a camera image"
        for t in list(keep):
            raw = t[: -len("/compressed")] if t.endswith("/compressed") else None
            if raw is not None and raw in keep:
                keep.remove(t)
                skipped[t] = f"same camera as {raw}"
        return keep, skipped

    # -- opening ---------------------------------------------------------
    def _open(self) -> None:
        if self.ros1:
            from rosbags.rosbag1 import Reader as Reader1

            self._reader = Reader1(self.path)
            try:
                self._reader.open()
            except Exception as err:  # noqa: BLE001 - rosbags raises several error types
                raise InputCorruptError(self.path, f"cannot open ROS 1 bag: {err}", offset=0) from None
            self._conns = list(self._reader.connections)
            return
        from rosbags.rosbag2 import Reader

        try:
            self._reader = Reader(self.path)
            self._reader.open()
            self._conns = list(self._reader.connections)
            return
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - damaged file: try the tolerant MCAP scan
            self._open_error = str(err)
            self._reader = None
        files = self._storage_files()
        if files and all(f.suffix == ".db3" for f in files) and len(files) == 1 and files[0].exists():
            self._conns = self._sqlite_salvage(files[0])
            return
        if not files or any(f.suffix != ".mcap" for f in files) or not all(f.exists() for f in files):
            raise InputCorruptError(self.path, f"cannot open bag: {self._open_error}", offset=0)
        self._fallback_files = files
        self._conns = self._scan_connections(files)

    def _sqlite_salvage(self, db: Path) -> list[Any]:
        """Open a cut SQLite bag: a zero-padded private copy (the input is never touched) read in
        timestamp order until the first unreadable page."""
        import shutil
        import sqlite3
        import tempfile

        from rosbags.interfaces import (
            Connection,
            ConnectionExtRosbag2,
            MessageDefinition,
            MessageDefinitionFormat,
        )
        from rosbags.rosbag2.metadata import parse_qos

        size = db.stat().st_size
        with db.open("rb") as f:
            head = f.read(100)
        if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
            raise InputCorruptError(db, f"not an SQLite database ({self._open_error})", offset=0)
        page = struct.unpack(">H", head[16:18])[0] or 65536
        pages = struct.unpack(">I", head[28:32])[0]
        self._tmpdir = tempfile.mkdtemp(prefix="dinov3-salvage-")
        copy = Path(self._tmpdir) / db.name
        shutil.copyfile(db, copy)
        if pages * page > size:
            with copy.open("ab") as f:
                f.truncate(pages * page)
        self._sqlite_size = (size, pages * page)
        try:
            con = sqlite3.connect(f"file:{copy}?immutable=1", uri=True, check_same_thread=False)
            topics = con.execute("SELECT * FROM topics ORDER BY id").fetchall()
            try:
                defs = {
                    r[0]: (r[1], r[2])
                    for r in con.execute(
                        "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions"
                    )
                }
            except sqlite3.DatabaseError:
                defs = {}
        except sqlite3.DatabaseError as err:
            raise InputCorruptError(
                db, f"cannot read the topic table: {err} ({self._open_error})", offset=0
            ) from None
        self._sqlite = con
        conns = []
        for row in topics:
            tid, name, msgtype, fmt, qos = row[:5]
            enc, text = defs.get(msgtype, ("", ""))
            mfmt = MessageDefinitionFormat.IDL if enc == "ros2idl" else MessageDefinitionFormat.MSG
            try:
                q = parse_qos(qos)
            except Exception:  # noqa: BLE001 - QoS is cosmetic here
                q = []
            conns.append(
                Connection(
                    id=tid,
                    topic=name,
                    msgtype=msgtype,
                    msgdef=MessageDefinition(mfmt, text),
                    digest=row[5] if len(row) > 5 else "",
                    msgcount=0,
                    ext=ConnectionExtRosbag2(fmt, q),
                    owner=None,
                )
            )
        return conns

    def _storage_files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        meta = self.path / "metadata.yaml"
        if meta.exists():
            import yaml

            try:
                info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
                return [self.path / p for p in info["relative_file_paths"]]
            except (KeyError, TypeError, yaml.YAMLError):
                pass
        return sorted(self.path.glob("*.mcap")) + sorted(self.path.glob("*.db3"))

    def _scan_connections(self, files: list[Path]) -> list[Any]:
        """Connections of damaged MCAP files, rebuilt from the schema/channel records that survive."""
        from rosbags.interfaces import (
            Connection,
            ConnectionExtRosbag2,
            MessageDefinition,
            MessageDefinitionFormat,
        )

        from .mcap_scan import McapChannel, McapDamagedError, McapSchema, scan

        conns: dict[tuple[str, int], Any] = {}
        self._fallback_conn = {}
        for f in files:
            schemas: dict[int, McapSchema] = {}
            try:
                for rec in scan(f):
                    if isinstance(rec, McapSchema):
                        schemas[rec.id] = rec
                    elif isinstance(rec, McapChannel):
                        sch = schemas.get(rec.schema_id)
                        fmt = (
                            MessageDefinitionFormat.IDL
                            if sch and sch.encoding == "ros2idl"
                            else (MessageDefinitionFormat.MSG)
                        )
                        conn = Connection(
                            id=len(conns) + 1,
                            topic=rec.topic,
                            msgtype=sch.name if sch else "",
                            msgdef=MessageDefinition(fmt, sch.data.decode() if sch else ""),
                            digest="",
                            msgcount=0,
                            ext=ConnectionExtRosbag2(rec.message_encoding, []),
                            owner=None,
                        )
                        conns[(str(f), rec.id)] = conn
            except McapDamagedError:
                pass
        self._fallback_conn = conns
        return list(conns.values())

    def _spec(self, c: Any) -> ConnSpec:
        from rosbags.interfaces import MessageDefinitionFormat

        ext = c.ext
        qos = tuple(getattr(ext, "offered_qos_profiles", ()) or ())
        fmt = "ros2idl" if c.msgdef.format == MessageDefinitionFormat.IDL else "ros2msg"
        msgdef, digest = c.msgdef.data, c.digest
        if not self.ros1 and (not msgdef or not str(digest).startswith("RIHS01_")):
            try:  # salvaged connections may lack them: regenerate from the typestore
                msgdef = msgdef or self.typestore.generate_msgdef(c.msgtype, ros_version=2)[0]
                digest = self.typestore.hash_rihs01(c.msgtype)
            except Exception:  # noqa: BLE001 - unknown type: copying it fails later with a clear error
                pass
        return ConnSpec(
            c.topic, c.msgtype, msgdef, fmt, digest, getattr(ext, "serialization_format", "cdr"), qos
        )

    # -- reading ---------------------------------------------------------
    def deserialize(self, raw: bytes | memoryview, msgtype: str) -> Any:
        """Deserialize a raw message of this bag."""
        if self.ros1:
            return self.typestore.deserialize_ros1(bytes(raw), msgtype)
        return self.typestore.deserialize_cdr(bytes(raw), msgtype)

    def camera_info(self, raw: bytes | memoryview) -> CameraIntrinsics | None:
        """A serialized camera_info of this bag as intrinsics (``None`` when malformed or unusable)."""
        from dinov3_ros.msgs.decode import camera_info_to_intrinsics, decode_camera_info

        try:
            if self.ros1:
                return camera_info_to_intrinsics(self.deserialize(raw, CAMERA_INFO_TYPE))
            return decode_camera_info(raw)
        except Exception:  # noqa: BLE001 - any malformed camera_info is unusable
            return None

    def first_camera_info(self) -> dict[str, Any]:
        """First camera_info of each paired topic (so the first frames have intrinsics too)."""
        out: dict[str, Any] = {}
        if self._reader is None:
            return out
        wanted = set(self.info_topics.values())
        for c in self._conns:
            if c.topic not in wanted:
                continue
            try:
                for _conn, _t, raw in self._reader.messages(connections=[c]):
                    k = self.camera_info(raw)
                    if k is not None:
                        out[c.topic] = k
                        break
            except Exception:  # noqa: BLE001 - damage is reported by the main read
                continue
        return out

    def _raw_stream(self, wanted_ids: set[int]) -> Iterator[tuple[int, int, bytes, int | None]]:
        """``(conn index, log time, raw, offset)`` in stored order; raises InputCorruptError on damage."""
        idx = {id(c): i for i, c in enumerate(self._conns)}
        if self._reader is not None:
            conns = [c for i, c in enumerate(self._conns) if i in wanted_ids]
            last_t: int | None = None
            last_topic: str | None = None
            try:
                for conn, t, raw in self._reader.messages(connections=conns):
                    last_t, last_topic = t, conn.topic
                    yield idx[id(conn)], t, raw, None
            except (InputCorruptError, GeneratorExit):
                raise
            except Exception as err:  # noqa: BLE001 - rosbags/apsw/zstd errors on damaged data
                raise InputCorruptError(
                    self.path,
                    f"unreadable data after the message at {last_t} ns on {last_topic}: "
                    f"{type(err).__name__}: {err}",
                    topic=last_topic,
                    timestamp_ns=last_t,
                ) from None
            return
        if getattr(self, "_sqlite", None) is not None:
            import sqlite3

            ids = {c.id: i for i, c in enumerate(self._conns)}
            last_t = None
            last_topic = None
            try:
                for tid, t, raw in self._sqlite.execute(
                    "SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp"
                ):
                    i = ids.get(tid)
                    if i is None:
                        continue
                    last_t, last_topic = t, self._conns[i].topic
                    if i in wanted_ids:
                        yield i, t, raw, None
            except sqlite3.DatabaseError as err:
                have, need = self._sqlite_size
                raise InputCorruptError(
                    self.path,
                    f"{err} (file has {have} of {need} bytes: truncated); last complete message: "
                    f"{last_topic} at {last_t} ns",
                    topic=last_topic,
                    offset=have,
                    timestamp_ns=last_t,
                ) from None
            return
        from .mcap_scan import McapChannel, McapDamagedError, McapMessage, scan

        for f in self._fallback_files:
            chan_topic: dict[int, str] = {}
            last_t = None
            last_topic = None
            try:
                for rec in scan(f):
                    if isinstance(rec, McapChannel):
                        chan_topic[rec.id] = rec.topic
                    elif isinstance(rec, McapMessage):
                        conn = self._fallback_conn.get((str(f), rec.channel_id))
                        if conn is None:
                            continue
                        i = idx[id(conn)]
                        last_t, last_topic = rec.log_time, conn.topic
                        if i in wanted_ids:
                            yield i, rec.log_time, rec.data, rec.offset
            except McapDamagedError as err:
                raise InputCorruptError(
                    f,
                    f"{err.reason} (rosbags: {self._open_error}); last complete message: "
                    f"{last_topic} at {last_t} ns",
                    topic=last_topic,
                    offset=err.offset,
                    timestamp_ns=last_t,
                ) from None

    def messages(self, copy_input: bool = False, skip_before: int = 0) -> Iterator[InputMessage]:
        info_of = {ci: t for t, ci in self.info_topics.items()}
        wanted: set[int] = set()
        for i, c in enumerate(self._conns):
            if copy_input or c.topic in self.image_topics or c.topic in info_of:
                wanted.add(i)
        latest = self.first_camera_info()
        seq = 0
        for ci, t, raw, off in self._raw_stream(wanted):
            c = self._conns[ci]
            if c.topic in self.image_topics:
                kind = "image" if c.msgtype == IMAGE_TYPES[0] else "compressed"
            elif c.topic in info_of and c.msgtype == CAMERA_INFO_TYPE:
                kind = "camera_info"
                k = self.camera_info(raw)
                if k is not None:  # an unusable camera_info keeps the previous one
                    latest[c.topic] = k
            else:
                kind = "other"
            if kind == "camera_info" and not copy_input:
                continue
            if kind == "other" and not copy_input:
                continue
            m = InputMessage(
                seq=seq,
                topic=c.topic,
                log_ns=t,
                kind=kind,
                conn=ci,
                raw=raw if seq >= skip_before else None,
                offset=off,
            )
            if kind in ("image", "compressed"):
                m.camera_info = latest.get(self.info_topics.get(c.topic, ""))
            seq += 1
            yield m

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001
                pass
            self._reader = None
        if getattr(self, "_sqlite", None) is not None:
            self._sqlite.close()
            self._sqlite = None
        if getattr(self, "_tmpdir", None):
            import shutil

            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


# --------------------------------------------------------------------------- videos and folders


@dataclass
class VideoSource(Source):
    """A video file read sequentially with OpenCV; stamps = start + index / fps."""

    fps: float = 0.0
    topic: str = "/camera/image_raw"
    frame_id: str = "camera"
    calibration: Calibration | None = None
    start_ns: int = 0

    def __post_init__(self) -> None:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise InputCorruptError(
                self.path, "OpenCV cannot open the video (unknown codec or damaged file)", offset=0
            )
        native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        if self.fps <= 0:
            self.fps = native if native > 0 else 30.0
        self.fmt = "video"
        self.image_topics = [self.topic]

    def messages(self, copy_input: bool = False, skip_before: int = 0) -> Iterator[InputMessage]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while True:
                if i < skip_before:
                    ok = cap.grab()
                    frame = None
                else:
                    ok, frame = cap.read()
                if not ok:
                    break
                stamp = self.start_ns + round(i * 1e9 / self.fps)
                yield InputMessage(
                    seq=i,
                    topic=self.topic,
                    log_ns=stamp,
                    kind="frame",
                    array=frame,
                    stamp_ns=stamp,
                    frame_id=self.frame_id,
                    calibration=self.calibration,
                )
                i += 1
            # Containers that index their frames let us tell a cut file from a complete one.
            if self.declared > 0 and i < self.declared - 1 and self.path.suffix.lower() != ".mkv":
                stamp = self.start_ns + round(i * 1e9 / self.fps)
                raise InputCorruptError(
                    self.path,
                    f"video ends after frame {i} of {self.declared} declared frames",
                    topic=self.topic,
                    timestamp_ns=stamp,
                )
        finally:
            cap.release()


@dataclass
class FolderSource(Source):
    """A folder of images in sorted (natural) name order; stamps = start + index / fps."""

    fps: float = 30.0
    topic: str = "/camera/image_raw"
    frame_id: str = "camera"
    calibration: Calibration | None = None
    start_ns: int = 0

    def __post_init__(self) -> None:
        def natural(p: Path) -> list[Any]:
            return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]

        self.files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=natural)
        if not self.files:
            raise InputError(f"{self.path}: no image files ({', '.join(IMAGE_EXTS)})")
        self.fmt = "folder"
        self.image_topics = [self.topic]
        if self.fps <= 0:
            self.fps = 30.0

    def messages(self, copy_input: bool = False, skip_before: int = 0) -> Iterator[InputMessage]:
        for i, f in enumerate(self.files):
            stamp = self.start_ns + round(i * 1e9 / self.fps)
            yield InputMessage(
                seq=i,
                topic=self.topic,
                log_ns=stamp,
                kind="file",
                path=str(f),
                stamp_ns=stamp,
                frame_id=self.frame_id,
                calibration=self.calibration,
            )


# --------------------------------------------------------------------------- factory


def is_bag(path: Path) -> bool:
    """True for a rosbag2 directory or a .mcap/.db3/.bag file."""
    if path.is_dir():
        return (path / "metadata.yaml").exists() or any(path.glob("*.mcap")) or any(path.glob("*.db3"))
    return path.suffix.lower() in BAG_EXTS


def open_source(
    path: str | Path,
    *,
    topics: Sequence[str] | None = None,
    calibration: Calibration | None = None,
    fps: float = 0.0,
    frame_id: str = "camera",
    topic: str = "/camera/image_raw",
) -> Source:
    """Open any supported input read-only; ``InputError`` names the problem for unusable paths."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if is_bag(p):
        return BagSource(p, topics)
    if p.is_dir():
        return FolderSource(path=p, fps=fps or 30.0, topic=topic, frame_id=frame_id, calibration=calibration)
    if p.suffix.lower() in VIDEO_EXTS:
        return VideoSource(path=p, fps=fps, topic=topic, frame_id=frame_id, calibration=calibration)
    raise InputError(
        f"input {p}: unknown format (expected a rosbag2 directory, {', '.join(BAG_EXTS)}, "
        f"a video {', '.join(VIDEO_EXTS)} or an image folder)"
    )


def decode_message(src: Source, m: InputMessage) -> tuple[np.ndarray, int, str]:
    """Decode an image record to ``(RGB uint8 [H,W,3], header stamp ns, frame_id)`` with the one
    decoder (``msgs.decode``); ``ValueError`` (with the reason) for an undecodable frame."""
    import cv2

    from dinov3_ros.msgs.decode import decode_image, decode_image_msg

    if m.kind == "frame":
        assert m.array is not None
        return cv2.cvtColor(m.array, cv2.COLOR_BGR2RGB), m.stamp_ns, m.frame_id
    if m.kind == "file":
        img = cv2.imread(str(m.path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot decode image file {m.path}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), m.stamp_ns, m.frame_id
    assert isinstance(src, BagSource) and m.raw is not None
    msgtype = IMAGE_TYPES[0] if m.kind == "image" else IMAGE_TYPES[1]
    if not src.ros1:
        return decode_image(msgtype, m.raw)
    try:
        msg = src.deserialize(m.raw, msgtype)
    except Exception as err:  # noqa: BLE001 - any deserialization failure = undecodable frame
        raise ValueError(f"cannot deserialize {msgtype}: {type(err).__name__}: {err}") from None
    return decode_image_msg(msg)


__all__ = [
    "CAMERA_ENCODINGS",
    "BagSource",
    "Calibration",
    "ConnSpec",
    "FolderSource",
    "InputCorruptError",
    "InputError",
    "InputMessage",
    "Source",
    "VideoSource",
    "calibration_from_yaml",
    "camera_info_topic",
    "decode_message",
    "is_bag",
    "open_source",
]

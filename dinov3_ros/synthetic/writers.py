"""Writers for rendered frames: rosbag2 (mcap), image folders and video files. All are atomic.

Bag topics (header ``frame_id`` = ``camera_optical_frame`` unless stated):

* ``/camera/image_raw`` ``sensor_msgs/Image`` ``rgb8`` — or, with ``compressed=True``,
  ``/camera/image_raw/compressed`` ``sensor_msgs/CompressedImage`` (``jpeg``);
* ``/camera/camera_info`` ``sensor_msgs/CameraInfo`` (``plumb_bob``, zero distortion);
* ``/camera/depth/image_raw`` ``sensor_msgs/Image`` ``32FC1`` metres (or ``16UC1`` millimetres),
  0 = no depth;
* ``/camera/instances`` ``sensor_msgs/Image`` ``16UC1`` instance ids (0 = background);
* ``/camera/pose`` ``geometry_msgs/PoseStamped``: the optical frame's pose in ``world`` (z up);
* ``/synthetic/meta`` ``std_msgs/String``: JSON ``{scene, frame, instance_classes, class_names}``.

Message and receive stamps are ``start_ns + k * 1e9 / frame_rate`` for the k-th written frame.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from dinov3_ros.msgs.layouts import depth_image
from dinov3_ros.synthetic.frame import SynthFrame
from dinov3_ros.synthetic.shapes import CLASS_NAMES

#: fixed, deterministic start time of written streams (2023-11-14T22:13:20Z)
DEFAULT_START_NS = 1_700_000_000_000_000_000
WORLD_FRAME = "world"
TOPICS = {
    "image": "/camera/image_raw",
    "image_compressed": "/camera/image_raw/compressed",
    "camera_info": "/camera/camera_info",
    "depth": "/camera/depth/image_raw",
    "instances": "/camera/instances",
    "pose": "/camera/pose",
    "meta": "/synthetic/meta",
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``path`` (replacing it if allowed)."""
    final = Path(path).absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"output {final} exists (pass overwrite=True / --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_parent = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp = tmp_parent / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"writer produced nothing at {tmp}")
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)


def _period_ns(frame_rate: float) -> int:
    if frame_rate <= 0:
        raise ValueError(f"frame_rate must be > 0, got {frame_rate}")
    return round(1e9 / frame_rate)


def rotation_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion ``(x, y, z, w)`` of a rotation matrix (w >= 0)."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(R, np.float64)).as_quat()
    if w < 0:
        x, y, z, w = -x, -y, -z, -w
    return float(x), float(y), float(z), float(w)


def depth_to_mm16(depth: np.ndarray) -> np.ndarray:
    """Metres (float) to uint16 millimetres, rounded; 0 stays 0; values beyond 65.535 m saturate."""
    return depth_image(np.asarray(depth, np.float64), "16UC1")


# --------------------------------------------------------------------------------------------
# rosbag2 (mcap)
# --------------------------------------------------------------------------------------------
class _BagMessages:
    """Message objects for the topics above: Image / CompressedImage / CameraInfo / Header through the
    shared builders of :mod:`dinov3_ros.msgs` (same layouts as the live node), the rest here."""

    def __init__(self, typestore) -> None:
        from dinov3_ros.msgs import builders
        from dinov3_ros.msgs.provider import rosbags_types

        self.b = builders
        self.tp = rosbags_types(typestore)

    def header(self, stamp_ns: int, frame_id: str):
        return self.b.header(self.tp, stamp_ns, frame_id)

    def image(self, arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
        return self.b.image(self.tp, self.header(stamp_ns, frame_id), arr, encoding)

    def jpeg(self, rgb: np.ndarray, quality: int, stamp_ns: int, frame_id: str):
        return self.b.compressed_image(self.tp, self.header(stamp_ns, frame_id), rgb, "jpeg", quality)

    def camera_info(self, K: np.ndarray, width: int, height: int, stamp_ns: int, frame_id: str):
        from dinov3_ros.core.camera import CameraIntrinsics

        intr = CameraIntrinsics(K=K, width=width, height=height, D=np.zeros(5), distortion_model="plumb_bob")
        return self.b.camera_info(self.tp, self.header(stamp_ns, frame_id), intr)

    def pose(self, T: np.ndarray, stamp_ns: int):
        x, y, z, w = rotation_to_quaternion(T[:3, :3])
        p = T[:3, 3]
        new = self.tp.new
        return new(
            "geometry_msgs/msg/PoseStamped",
            header=self.header(stamp_ns, WORLD_FRAME),
            pose=new(
                "geometry_msgs/msg/Pose",
                position=new("geometry_msgs/msg/Point", x=float(p[0]), y=float(p[1]), z=float(p[2])),
                orientation=new("geometry_msgs/msg/Quaternion", x=x, y=y, z=z, w=w),
            ),
        )

    def string(self, text: str):
        return self.tp.new("std_msgs/msg/String", data=text)


def _image_type(compressed: bool) -> str:
    return "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"


def _add_connections(writer, ts, compressed: bool) -> dict:
    """One connection per written topic, keyed like :data:`TOPICS` (the image under ``image``)."""
    img_topic = TOPICS["image_compressed"] if compressed else TOPICS["image"]
    return {
        "image": writer.add_connection(img_topic, _image_type(compressed), typestore=ts),
        "camera_info": writer.add_connection(
            TOPICS["camera_info"], "sensor_msgs/msg/CameraInfo", typestore=ts
        ),
        "depth": writer.add_connection(TOPICS["depth"], "sensor_msgs/msg/Image", typestore=ts),
        "instances": writer.add_connection(TOPICS["instances"], "sensor_msgs/msg/Image", typestore=ts),
        "pose": writer.add_connection(TOPICS["pose"], "geometry_msgs/msg/PoseStamped", typestore=ts),
        "meta": writer.add_connection(TOPICS["meta"], "std_msgs/msg/String", typestore=ts),
    }


def _frame_messages(
    mk: _BagMessages,
    fr: SynthFrame,
    t: int,
    compressed: bool,
    jpeg_quality: int,
    depth_encoding: str,
    depth_quantum: float | None,
) -> list[tuple[str, object, str]]:
    """``(connection key, message, type)`` of one frame, in the order they are written."""
    fid = fr.frame_id
    if compressed:
        msg = mk.jpeg(fr.rgb, jpeg_quality, t, fid)
    else:
        msg = mk.image(fr.rgb, "rgb8", t, fid)
    if depth_encoding == "32FC1":
        d = fr.depth.astype("<f4")
        if depth_quantum is not None:
            d = (np.rint(d / depth_quantum) * depth_quantum).astype("<f4")
        dmsg = mk.image(d, "32FC1", t, fid)
    else:
        dmsg = mk.image(depth_to_mm16(fr.depth), "16UC1", t, fid)
    meta = {
        "scene": fr.scene_index,
        "frame": fr.frame_index,
        "instance_classes": fr.instance_classes.tolist(),
        "class_names": list(CLASS_NAMES),
    }
    return [
        ("image", msg, _image_type(compressed)),
        ("camera_info", mk.camera_info(fr.K, fr.width, fr.height, t, fid), "sensor_msgs/msg/CameraInfo"),
        ("depth", dmsg, "sensor_msgs/msg/Image"),
        ("instances", mk.image(fr.instances.astype("<u2"), "16UC1", t, fid), "sensor_msgs/msg/Image"),
        ("pose", mk.pose(fr.T_world_cam, t), "geometry_msgs/msg/PoseStamped"),
        ("meta", mk.string(json.dumps(meta)), "std_msgs/msg/String"),
    ]


def write_bag(
    frames: Iterable[SynthFrame],
    path: str | os.PathLike,
    *,
    compressed: bool = False,
    jpeg_quality: int = 90,
    depth_encoding: str = "32FC1",
    depth_quantum: float | None = None,
    frame_rate: float = 10.0,
    start_ns: int = DEFAULT_START_NS,
    storage_compression: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write frames to a rosbag2 directory (mcap storage, zstd chunks if ``storage_compression``).

    ``depth_quantum`` (metres, e.g. ``2**-10``) rounds 32FC1 depth to multiples of it, which makes the
    zstd chunks ~6x smaller; ``None`` keeps the exact float depth.
    """
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if depth_encoding not in ("32FC1", "16UC1"):
        raise ValueError(f"depth_encoding must be '32FC1' or '16UC1', got {depth_encoding!r}")
    if depth_quantum is not None and not depth_quantum > 0:
        raise ValueError(f"depth_quantum must be > 0 or None, got {depth_quantum}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    period = _period_ns(frame_rate)
    ts = get_typestore(Stores.ROS2_JAZZY)
    mk = _BagMessages(ts)
    final = Path(path)
    with atomic_path(final, overwrite) as tmp:
        writer = Writer(tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        if storage_compression:
            writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        with writer:
            conns = _add_connections(writer, ts, compressed)
            n = 0
            for k, fr in enumerate(frames):
                t = int(start_ns) + k * period
                for key, m, typ in _frame_messages(
                    mk, fr, t, compressed, jpeg_quality, depth_encoding, depth_quantum
                ):
                    writer.write(conns[key], t, ts.serialize_cdr(m, typ))
                n += 1
            if n == 0:
                raise ValueError("write_bag: no frames to write")
    return final


# --------------------------------------------------------------------------------------------
# image folder
# --------------------------------------------------------------------------------------------
def write_folder(
    frames: Iterable[SynthFrame],
    path: str | os.PathLike,
    *,
    frame_rate: float = 10.0,
    start_ns: int = DEFAULT_START_NS,
    overwrite: bool = False,
    jpeg_quality: int | None = None,
) -> Path:
    """Write ``rgb/NNNNNN.png``, ``depth/NNNNNN.png`` (uint16 mm), ``instances/NNNNNN.png`` (uint16)
    and ``meta.json`` (class names, depth scale, per frame: stamp, K, T_world_cam, instance classes).

    ``jpeg_quality`` stores RGB as ``rgb/NNNNNN.jpg`` instead (about 8x smaller: a compact training pack).
    """
    period = _period_ns(frame_rate)
    final = Path(path)
    with atomic_path(final, overwrite) as tmp:
        for sub in ("rgb", "depth", "instances"):
            (tmp / sub).mkdir(parents=True)
        records = []
        for k, fr in enumerate(frames):
            name = f"{k:06d}.png"
            rgb_name = name if jpeg_quality is None else f"{k:06d}.jpg"
            params = [] if jpeg_quality is None else [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
            cv2.imwrite(str(tmp / "rgb" / rgb_name), cv2.cvtColor(fr.rgb, cv2.COLOR_RGB2BGR), params)
            cv2.imwrite(str(tmp / "depth" / name), depth_to_mm16(fr.depth))
            cv2.imwrite(str(tmp / "instances" / name), fr.instances.astype(np.uint16))
            records.append(
                {
                    "file": name,
                    "rgb_file": rgb_name,
                    "stamp_ns": int(start_ns) + k * period,
                    "scene_index": fr.scene_index,
                    "frame_index": fr.frame_index,
                    "frame_id": fr.frame_id,
                    "K": fr.K.tolist(),
                    "T_world_cam": fr.T_world_cam.tolist(),
                    "instance_classes": fr.instance_classes.tolist(),
                }
            )
        if not records:
            raise ValueError("write_folder: no frames to write")
        meta = {
            "format": "dinov3_ros.synthetic.folder/1",
            "class_names": list(CLASS_NAMES),
            "depth_scale": 0.001,
            "depth_note": "depth/*.png: uint16 z-depth in millimetres along the optical axis, 0 = invalid",
            "instances_note": "instances/*.png: uint16 instance id, 0 = background",
            "pose_note": "T_world_cam: camera optical frame (x right, y down, z forward) to world (z up)",
            "frames": records,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return final


def read_folder(path: str | os.PathLike) -> Iterator[SynthFrame]:
    """Read back a folder written by :func:`write_folder` (normals are not stored: zeros)."""
    frames = FolderFrames(path)
    for k in range(len(frames)):
        yield frames[k]


class FolderFrames:
    """Random access to a folder written by :func:`write_folder`: ``len()`` and ``frames[k]``.

    A drop-in for ``SceneGenerator[k]`` where open3d is not installed (e.g. a GPU training machine fed
    a pre-rendered pack). Picklable (for DataLoader workers): only the path and the metadata are held.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)
        meta_file = self.root / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.root} is not a synthetic image folder (no meta.json)")
        meta = json.loads(meta_file.read_text())
        self.records: list[dict] = list(meta["frames"])
        if not self.records:
            raise ValueError(f"{self.root}: meta.json lists no frames")
        self.scale = float(meta.get("depth_scale", 0.001))
        self.class_names = list(meta.get("class_names", CLASS_NAMES))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, k: int) -> SynthFrame:
        if not -len(self) <= k < len(self):
            raise IndexError(f"frame {k} out of range for {len(self)} frames in {self.root}")
        rec = self.records[k]
        bgr = cv2.imread(str(self.root / "rgb" / rec.get("rgb_file", rec["file"])), cv2.IMREAD_COLOR)
        d = cv2.imread(str(self.root / "depth" / rec["file"]), cv2.IMREAD_UNCHANGED)
        inst_path = self.root / "instances" / rec["file"]
        inst = cv2.imread(str(inst_path), cv2.IMREAD_UNCHANGED) if inst_path.is_file() else None
        if bgr is None or d is None:
            raise FileNotFoundError(f"missing or unreadable image(s) for frame {rec['file']} in {self.root}")
        if inst is None:
            inst = np.zeros(d.shape, np.int32)
        return SynthFrame(
            rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
            depth=d.astype(np.float32) * np.float32(self.scale),
            instances=inst.astype(np.int32),
            normals=np.zeros((*d.shape, 3), np.float32),
            K=np.array(rec["K"], np.float64),
            T_world_cam=np.array(rec["T_world_cam"], np.float64),
            stamp_ns=int(rec["stamp_ns"]),
            instance_classes=np.array(rec["instance_classes"], np.int32),
            scene_index=int(rec["scene_index"]),
            frame_index=int(rec["frame_index"]),
            frame_id=str(rec.get("frame_id", "camera_optical_frame")),
        )


# --------------------------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------------------------
def write_video(
    frames: Iterable[SynthFrame], path: str | os.PathLike, *, fps: float = 10.0, overwrite: bool = False
) -> Path:
    """Write the RGB frames to a video file (``.mp4`` with the ``mp4v`` codec, ``.avi`` with MJPG)."""
    final = Path(path)
    suffix = final.suffix.lower()
    if suffix not in (".mp4", ".avi"):
        raise ValueError(f"video path must end in .mp4 or .avi, got {final.name!r}")
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if suffix == ".mp4" else "MJPG"))
    with atomic_path(final, overwrite) as tmp:
        vw = None
        n = 0
        try:
            for fr in frames:
                if vw is None:
                    vw = cv2.VideoWriter(str(tmp), fourcc, float(fps), (fr.width, fr.height))
                    if not vw.isOpened():
                        raise RuntimeError(f"OpenCV cannot open a video writer for {final.name}")
                vw.write(cv2.cvtColor(fr.rgb, cv2.COLOR_RGB2BGR))
                n += 1
        finally:
            if vw is not None:
                vw.release()
        if n == 0:
            raise ValueError("write_video: no frames to write")
    return final

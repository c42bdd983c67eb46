"""Node parameters: one table of every parameter (default, description, range, read-only), validation
with clear errors, unknown names with the closest valid one.

Read-only (need a restart / lifecycle cleanup+configure): the model (``weights``, ``depth_head``,
``objects_head``, ``backend``, ``device``, ``precision``, ``resolution``, ``cuda_graphs``: a
``core.spec.ModelSpec``), ``cameras``, ``image_transport``, the QoS choices, ``diagnostics_period``,
``max_input_bytes``.
Changeable at run time: ``outputs.<name>`` (one per registered output), ``lazy``, ``max_age_ms``,
``batch_window_ms``, the camera_info policy, the diagnostics thresholds and every ``pipeline.<setting>``
of :class:`~dinov3_ros.core.config.PipelineConfig`.

``resolution`` may be left empty (``""``): the node then runs at the input size a fixed-size engine
(ONNX, TensorRT plan) was built for, else at 224x224.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.spec import BACKENDS, PRECISIONS, ModelSpec, parse_resolution
from dinov3_ros.pipeline.outputs import OUTPUTS, REGISTRY

TRANSPORTS = ("raw", "compressed", "both")
QOS_NAMES = ("sensor_data", "default", "system_default")
#: the network input size used when ``resolution`` is empty and the engine takes any size
DEFAULT_RESOLUTION = (224, 224)


@dataclass(frozen=True)
class Spec:
    """One top-level parameter: default, description, valid range or choices, read-only after start."""

    default: Any
    description: str
    read_only: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None
    dynamic: bool = False  # any type accepted by rclpy (validated here)


NODE_PARAMS: dict[str, Spec] = {
    "weights": Spec(
        "default", "checkpoint/engine file (.pth, .onnx, .plan), 'default' or 'random:<arch>'", True
    ),
    "depth_head": Spec("auto", "depth head file; 'auto' = the registry model's shipped head; 'none'", True),
    "objects_head": Spec(
        "auto",
        "objects head file (TokenCut's learned token projection); 'auto' = the registry model's shipped "
        "head; 'none' = TokenCut on the raw tokens",
        True,
    ),
    "backend": Spec("torch", "inference backend", True, choices=BACKENDS),
    "device": Spec("cpu", "cpu | cuda | cuda:N", True),
    "precision": Spec(
        "fp32", "fp32 | fp16 | bf16 | int8 (int8: onnxruntime on CPU)", True, choices=PRECISIONS
    ),
    "resolution": Spec(
        "",
        "network input [H, W] or 'HxW', multiples of 16 (frames are letterboxed); empty = the size a "
        "fixed-size engine was built for, else 224x224",
        True,
        dynamic=True,
    ),
    "cuda_graphs": Spec(
        True, "torch on CUDA: replay the forward as a CUDA graph (one launch per frame)", True
    ),
    "cameras": Spec("", "comma-separated camera namespaces ('' = one camera on 'image'); batched", True),
    "image_transport": Spec(
        "raw", "raw (image) | compressed (image/compressed) | both", True, choices=TRANSPORTS
    ),
    "input_qos": Spec(
        "sensor_data", "QoS of the image and camera_info subscriptions", True, choices=QOS_NAMES
    ),
    "output_qos": Spec("default", "QoS of the output publishers", True, choices=QOS_NAMES),
    "lazy": Spec(True, "compute an output only while it has subscribers"),
    "max_age_ms": Spec(0.0, "drop frames older than this when the worker takes them (0 = off)", lo=0.0),
    "batch_window_ms": Spec(5.0, "several cameras: wait up to this long for the others' frames", lo=0.0),
    "diagnostics_period": Spec(1.0, "seconds between /diagnostics messages", True, lo=0.01),
    "max_input_bytes": Spec(
        67_108_864,
        "larger input images (serialized or decoded) are dropped and counted as oversize",
        True,
        lo=1,
    ),
    "require_camera_info": Spec(
        True,
        "outputs that need intrinsics (depth/points, points, odometry, depth/camera_info) are published "
        "only with a usable camera_info; false = fall back to an ideal pinhole (pipeline.default_hfov_deg)",
    ),
    "camera_info_tolerance_ms": Spec(
        0.0,
        "pair a frame with the camera_info nearest in stamp within this; 0 = the nearest, any age",
        lo=0.0,
    ),
    "expected_rate_hz": Spec(0.0, "input rate per camera below which /diagnostics warns (0 = off)", lo=0.0),
    "latency_budget_ms": Spec(
        0.0, "p99 receive -> publish latency above which /diagnostics warns (0 = off)", lo=0.0
    ),
    "stale_after_s": Spec(2.0, "no input for this long -> /diagnostics warns 'stale input'", lo=0.0),
    "publish_tf": Spec(False, "also broadcast the odometry as TF (needs tf2_msgs)"),
}
NODE_DEFAULTS: dict[str, Any] = {k: s.default for k, s in NODE_PARAMS.items()}
NODE_DESCRIPTIONS: dict[str, str] = {k: s.description for k, s in NODE_PARAMS.items()}
READ_ONLY = tuple(k for k, s in NODE_PARAMS.items() if s.read_only)


def pipeline_defaults() -> dict[str, Any]:
    """``pipeline.<field>`` -> default for every PipelineConfig setting but resolution."""
    cfg = PipelineConfig()
    return {f"pipeline.{f.name}": getattr(cfg, f.name) for f in fields(cfg) if f.name != "resolution"}


def all_parameter_names() -> list[str]:
    """Every parameter the node declares (``use_sim_time`` and ``qos_overrides.*`` come from rclpy)."""
    return [*NODE_DEFAULTS, *(f"outputs.{o}" for o in OUTPUTS), *pipeline_defaults()]


def all_defaults() -> dict[str, Any]:
    """Every declared parameter -> its default (what the node has before any parameter file)."""
    return {**NODE_DEFAULTS, **{f"outputs.{o}": True for o in OUTPUTS}, **pipeline_defaults()}


def parameter_table() -> list[tuple[str, Any, str, str]]:
    """``(name, default, range or choices, description)`` of every parameter (for docs/NODE.md)."""
    rows = []
    for name, s in NODE_PARAMS.items():
        rows.append((name, s.default, _range_text(s.lo, s.hi, False, False, s.choices), s.description))
    for o in OUTPUTS:
        rows.append(
            (f"outputs.{o}", True, "", f"publish {', '.join('~/' + t.suffix for t in REGISTRY[o].topics)}")
        )
    for name, default in pipeline_defaults().items():
        d = PipelineConfig.describe(name.split(".", 1)[1])
        rng = _range_text(d["lo"], d["hi"], d["lo_open"], d["hi_open"], d["choices"])
        rows.append((name, default, rng, d["description"]))
    return rows


def _range_text(lo: Any, hi: Any, lo_open: bool, hi_open: bool, choices: Any) -> str:
    if choices:
        return " \\| ".join(choices)
    if lo is None and hi is None:
        return ""
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``."""
    known = list(known)
    m = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not m:  # a typo'd leaf under a known prefix: outputs.depht -> outputs.depth
        leaf = name.rsplit(".", 1)[-1]
        m = [k for k in difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in known], n=1)]
        m = [k for k in known if k.rsplit(".", 1)[-1] == m[0]][:1] if m else []
    return f" (did you mean '{m[0]}'?)" if m else ""


def unknown_parameters(given: Iterable[str], declared: Iterable[str]) -> list[str]:
    """Messages for parameter names in ``given`` that the node does not declare (``qos_overrides.*`` are
    rclpy's and checked by it)."""
    known = set(declared)
    return [
        f"unknown parameter '{n}'{closest(n, known)}"
        for n in sorted(given)
        if n not in known and not n.startswith("qos_overrides.")
    ]


@dataclass
class NodeSettings:
    """Validated node parameters. ``resolution`` is None when left to the engine (see module doc)."""

    weights: str
    depth_head: str
    objects_head: str
    backend: str
    device: str
    precision: str
    resolution: tuple[int, int] | None
    cuda_graphs: bool
    cameras: list[str]
    image_transport: str
    input_qos: str
    output_qos: str
    lazy: bool
    max_age_ms: float
    batch_window_ms: float
    diagnostics_period: float
    max_input_bytes: int
    require_camera_info: bool
    camera_info_tolerance_ms: float
    expected_rate_hz: float
    latency_budget_ms: float
    stale_after_s: float
    publish_tf: bool
    outputs: dict[str, bool] = field(default_factory=dict)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def model(self) -> ModelSpec:
        """The model to load (validated)."""
        return model_spec(vars(self), self.resolution)

    def with_resolution(self, resolution: tuple[int, int]) -> NodeSettings:
        """These settings at network input ``resolution`` (the engine's, when left empty)."""
        res = (int(resolution[0]), int(resolution[1]))
        return replace(self, resolution=res, pipeline=self.pipeline.with_updates(resolution=res))


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "integer", float: "number", str: "string"}.get(
        type(value), type(value).__name__
    )


def _coerce(name: str, value: Any, like: Any) -> Any:
    """``value`` as the type of ``like`` (ints accepted for floats); ValueError naming both types."""
    ok = True
    if isinstance(like, bool):
        ok = isinstance(value, bool)
    elif isinstance(like, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
    elif isinstance(like, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"parameter {name} must be finite, got {value}")
    elif isinstance(like, str):
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(
            f"parameter {name} must be a {_type_name(like)}, got {value!r} ({_type_name(value)})"
        )
    return value


def _check_spec(name: str, value: Any, s: Spec) -> None:
    if s.choices is not None and value not in s.choices:
        raise ValueError(f"parameter {name} must be one of {s.choices}, got {value!r}")
    if (s.lo is not None and value < s.lo) or (s.hi is not None and value > s.hi):
        raise ValueError(
            f"parameter {name} must be in {_range_text(s.lo, s.hi, False, False, None)}, got {value}"
        )


def parse_cameras(spec: str) -> list[str]:
    """``"front, rear"`` -> ``["front", "rear"]``; ``""`` -> ``[""]`` (one camera on ``image``)."""
    if not isinstance(spec, str):
        raise ValueError(f"parameter cameras must be a comma-separated string, got {spec!r}")
    names = [c.strip().strip("/") for c in spec.split(",")] if spec.strip() else [""]
    if len(set(names)) != len(names):
        raise ValueError(f"parameter cameras has duplicates: {spec!r}")
    for n in names:
        if n and not all(ch.isalnum() or ch in "_/" for ch in n):
            raise ValueError(f"camera namespace {n!r} is not a valid ROS name")
    return names


def parse_node_resolution(value: Any) -> tuple[int, int] | None:
    """``""``/``[]`` -> None (the engine's size); ``[H, W]`` or ``"HxW"`` -> (H, W); ValueError otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return None
    try:
        if isinstance(value, (list, tuple)) and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError
        h, w = parse_resolution(value if isinstance(value, str) else list(value))
    except (ValueError, TypeError):
        raise ValueError(
            f"parameter resolution must be [H, W] or 'HxW' (e.g. 480x640), got {value!r}"
        ) from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise ValueError(f"parameter resolution must be positive multiples of 16, got {h}x{w}")
    return h, w


def validate(values: Mapping[str, Any], channels: int | None = None) -> NodeSettings:
    """Build :class:`NodeSettings` from ``{name: value}`` (all declared parameters); ValueError naming the
    first bad parameter. ``channels``: the model's feature channels, when known (bounds ``features_k``)."""
    v = {k: _coerce(k, values[k], d) for k, d in NODE_DEFAULTS.items() if k != "resolution"}
    for k, s in NODE_PARAMS.items():
        if k != "resolution":
            _check_spec(k, v[k], s)
    resolution = parse_node_resolution(values["resolution"])
    try:
        model_spec(v, resolution).validate()
    except ValueError as exc:
        raise ValueError(f"parameter {exc}") from None
    outputs = {o: _coerce(f"outputs.{o}", values[f"outputs.{o}"], True) for o in OUTPUTS}
    changes = {k.split(".", 1)[1]: _coerce(k, values[k], d) for k, d in pipeline_defaults().items()}
    try:
        pipe = PipelineConfig().with_updates(resolution=resolution or DEFAULT_RESOLUTION, **changes)
    except ValueError as exc:
        raise ValueError(f"parameter pipeline: {exc}") from None
    if channels is not None and pipe.features_k > channels:
        raise ValueError(
            f"parameter pipeline.features_k={pipe.features_k} exceeds the model's {channels} feature channels"
        )
    cams = parse_cameras(v.pop("cameras"))
    return NodeSettings(cameras=cams, resolution=resolution, outputs=outputs, pipeline=pipe, **v)


def model_spec(values: Mapping[str, Any], resolution: tuple[int, int] | None) -> ModelSpec:
    """The model parameters as a :class:`~dinov3_ros.core.spec.ModelSpec`."""
    return ModelSpec(
        weights=values["weights"],
        backend=values["backend"],
        device=values["device"],
        precision=values["precision"],
        resolution=resolution,
        depth_head=values["depth_head"] or "none",
        cuda_graphs=bool(values["cuda_graphs"]),
        objects_head=values["objects_head"] or "none",
    )


def node_command(
    params: Mapping[str, Any],
    remaps: Mapping[str, str] | None = None,
    params_file: str | Path | None = None,
    node_name: str | None = None,
) -> list[str]:
    """``python -m dinov3_ros.ros.node`` argv: the params file (default: the package's
    ``config/dinov3.yaml``), then ``-p name:=value`` overrides and ``-r from:=to`` remappings
    (``node_name``: ``-r __node:=<name>``).

    Lists/tuples are written as YAML sequences (``resolution:=[240,320]``)."""
    if params_file is None:
        from dinov3_ros.paths import config_dir

        params_file = config_dir() / "dinov3.yaml"
    cmd = [sys.executable, "-m", "dinov3_ros.ros.node", "--ros-args", "--params-file", str(params_file)]
    if node_name:
        cmd += ["-r", f"__node:={node_name}"]
    for name, value in params.items():
        text = f"[{','.join(str(v) for v in value)}]" if isinstance(value, (list, tuple)) else str(value)
        cmd += ["-p", f"{name}:={text}"]
    for src, dst in (remaps or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd

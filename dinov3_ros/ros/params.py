"""Node parameters: declaration with descriptors, validation with clear errors, run-time updates.

Read-only (need a restart / lifecycle cleanup+configure): the model (``weights``, ``depth_head``,
``backend``, ``device``, ``precision``, ``resolution``, ``cuda_graphs``: a ``core.spec.ModelSpec``),
``cameras``, ``image_transport``, ``input_qos``, ``output_qos``, ``diagnostics_period``.
Changeable at run time: ``outputs.<name>`` (one per registered output), ``lazy``, ``max_age_ms``,
``batch_window_ms`` and every ``pipeline.<setting>`` of :class:`~dinov3_ros.core.config.PipelineConfig`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.core.spec import BACKENDS, PRECISIONS, ModelSpec
from dinov3_ros.pipeline.outputs import OUTPUTS

READ_ONLY = (
    "weights",
    "depth_head",
    "backend",
    "device",
    "precision",
    "resolution",
    "cuda_graphs",
    "cameras",
    "image_transport",
    "input_qos",
    "output_qos",
    "diagnostics_period",
)
TRANSPORTS = ("raw", "compressed", "both")
QOS_NAMES = ("sensor_data", "default", "system_default")

#: top-level parameter -> default
NODE_DEFAULTS: dict[str, Any] = {
    "weights": "default",
    "depth_head": "auto",
    "backend": "torch",
    "device": "cpu",
    "precision": "fp32",
    "resolution": [224, 224],
    "cuda_graphs": True,
    "cameras": "",
    "image_transport": "raw",
    "input_qos": "sensor_data",
    "output_qos": "default",
    "lazy": True,
    "max_age_ms": 0.0,
    "batch_window_ms": 5.0,
    "diagnostics_period": 1.0,
}
NODE_DESCRIPTIONS: dict[str, str] = {
    "weights": "checkpoint/engine path, 'default' (registry model) or 'random:<arch>'",
    "depth_head": "depth head file; 'auto' = the registry model's shipped head; 'none' = no depth",
    "backend": "torch | onnxruntime | tensorrt",
    "device": "cpu | cuda | cuda:N",
    "precision": "fp32 | fp16 | bf16 | int8 (int8: onnxruntime, dynamic INT8 MatMuls on CPU)",
    "resolution": "network input [H, W], multiples of 16 (frames are letterboxed)",
    "cuda_graphs": "torch backend on CUDA: replay the forward as a CUDA graph (one launch per frame)",
    "cameras": "comma-separated camera namespaces ('' = one camera on 'image'); batched through one model",
    "image_transport": "raw (image) | compressed (image/compressed) | both",
    "input_qos": "sensor_data | default | system_default",
    "output_qos": "sensor_data | default | system_default",
    "lazy": "compute an output only while it has subscribers",
    "max_age_ms": "drop frames older than this when the worker takes them (0 = off)",
    "batch_window_ms": "with several cameras, wait up to this long for the others' frames to batch them",
    "diagnostics_period": "seconds between /diagnostics messages",
}


def pipeline_defaults() -> dict[str, Any]:
    """``pipeline.<field>`` -> default for every PipelineConfig setting but resolution."""
    cfg = PipelineConfig()
    return {f"pipeline.{f.name}": getattr(cfg, f.name) for f in fields(cfg) if f.name != "resolution"}


def all_parameter_names() -> list[str]:
    """Every parameter the node declares (used by tests and the launch-file checks)."""
    return [*NODE_DEFAULTS, *(f"outputs.{o}" for o in OUTPUTS), *pipeline_defaults()]


@dataclass
class NodeSettings:
    """Validated node parameters."""

    weights: str
    depth_head: str
    backend: str
    device: str
    precision: str
    resolution: tuple[int, int]
    cuda_graphs: bool
    cameras: list[str]
    image_transport: str
    input_qos: str
    output_qos: str
    lazy: bool
    max_age_ms: float
    batch_window_ms: float
    diagnostics_period: float
    outputs: dict[str, bool] = field(default_factory=dict)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def model(self) -> ModelSpec:
        """The model to load (validated)."""
        return model_spec(vars(self), self.resolution)


def _coerce(name: str, value: Any, like: Any) -> Any:
    if isinstance(like, bool):
        if not isinstance(value, bool):
            raise ValueError(f"parameter {name} must be a bool, got {value!r}")
        return value
    if isinstance(like, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ValueError(f"parameter {name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(like, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"parameter {name} must be a number, got {value!r}")
        return float(value)
    if isinstance(like, str):
        if not isinstance(value, str):
            raise ValueError(f"parameter {name} must be a string, got {value!r}")
        return value
    return value


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


def validate(values: dict[str, Any]) -> NodeSettings:
    """Build :class:`NodeSettings` from ``{name: value}`` (all declared parameters); ValueError on bad input."""
    v = {k: _coerce(k, values[k], d) for k, d in NODE_DEFAULTS.items() if k != "resolution"}
    res = values["resolution"]
    if isinstance(res, str):
        parts = res.lower().replace(",", "x").split("x")
        res = [int(p) for p in parts] if all(p.strip().isdigit() for p in parts) else None
    if res is None or len(list(res)) != 2:
        raise ValueError(f"parameter resolution must be [H, W], got {values['resolution']!r}")
    resolution = (int(res[0]), int(res[1]))
    for name, choices in (
        ("image_transport", TRANSPORTS),
        ("input_qos", QOS_NAMES),
        ("output_qos", QOS_NAMES),
        ("backend", BACKENDS),
        ("precision", PRECISIONS),
    ):
        if v[name] not in choices:
            raise ValueError(f"parameter {name} must be one of {choices}, got {v[name]!r}")
    try:
        model_spec(v, resolution).validate()
    except ValueError as exc:
        raise ValueError(f"parameter {exc}") from None
    if v["max_age_ms"] < 0:
        raise ValueError(f"parameter max_age_ms must be >= 0, got {v['max_age_ms']}")
    if v["batch_window_ms"] < 0:
        raise ValueError(f"parameter batch_window_ms must be >= 0, got {v['batch_window_ms']}")
    if v["diagnostics_period"] <= 0:
        raise ValueError(f"parameter diagnostics_period must be > 0, got {v['diagnostics_period']}")
    outputs = {o: _coerce(f"outputs.{o}", values[f"outputs.{o}"], True) for o in OUTPUTS}
    pd = pipeline_defaults()
    changes = {k.split(".", 1)[1]: _coerce(k, values[k], d) for k, d in pd.items()}
    try:
        pipe = PipelineConfig().with_updates(resolution=resolution, **changes)
    except ValueError as exc:
        raise ValueError(f"parameter pipeline: {exc}") from exc
    cams = parse_cameras(v.pop("cameras"))
    return NodeSettings(cameras=cams, resolution=resolution, outputs=outputs, pipeline=pipe, **v)


def model_spec(values: Mapping[str, Any], resolution: tuple[int, int]) -> ModelSpec:
    """The model parameters as a :class:`~dinov3_ros.core.spec.ModelSpec`."""
    return ModelSpec(
        weights=values["weights"],
        backend=values["backend"],
        device=values["device"],
        precision=values["precision"],
        resolution=resolution,
        depth_head=values["depth_head"] or "none",
        cuda_graphs=bool(values["cuda_graphs"]),
    )


def node_command(
    params: Mapping[str, Any],
    remaps: Mapping[str, str] | None = None,
    params_file: str | Path | None = None,
) -> list[str]:
    """``python -m dinov3_ros.ros.node`` argv: the params file (default: the package's
    ``config/dinov3.yaml``), then ``-p name:=value`` overrides and ``-r from:=to`` remappings.

    Lists/tuples are written as YAML sequences (``resolution:=[240,320]``)."""
    if params_file is None:
        from dinov3_ros.paths import config_dir

        params_file = config_dir() / "dinov3.yaml"
    cmd = [sys.executable, "-m", "dinov3_ros.ros.node", "--ros-args", "--params-file", str(params_file)]
    for name, value in params.items():
        text = f"[{','.join(str(v) for v in value)}]" if isinstance(value, (list, tuple)) else str(value)
        cmd += ["-p", f"{name}:={text}"]
    for src, dst in (remaps or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd

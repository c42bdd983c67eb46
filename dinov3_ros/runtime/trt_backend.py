"""TensorRT backend: build from our ONNX (TRT 10 weakly typed or TRT 11 strongly typed), cache, execute;
or load a serialized plan directly.

Name-based TRT 10 API throughout (``set_tensor_address`` + ``execute_async_v3`` on torch CUDA buffers).
Engines built from an ONNX are cached under a key of GPU name + compute capability + TensorRT version +
ONNX sha256 + precision + shape profile; the timing cache is persisted next to them.

A plan carries no metadata of ours, so what the pipeline needs (input size, patch size, normalisation,
output names, arch, precision) travels beside it: our builds write a JSON sidecar ``<plan>.json``
(:func:`save_plan`). A plan built elsewhere (``trtexec --onnx=model.onnx --saveEngine=model.plan``) takes
its metadata from our ONNX: given as ``onnx_path=``, or the ``.onnx`` with the plan's stem next to it.
Without either, the input size, patch size and output names are read off the engine's I/O tensors and
the normalisation is assumed (ImageNet mean/std, reported in ``EngineInfo.extra``). Every source is
checked against the engine's I/O tensors; a mismatch is an error that names both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Engine, resolution_mismatch
from .ort_backend import info_from_metadata, read_metadata

__all__ = [
    "PlanMetadataError",
    "PlanSignature",
    "TrtEngine",
    "build_engine",
    "calibration_images",
    "engine_cache_key",
    "import_tensorrt",
    "load_plan",
    "onnx_sha256",
    "plan_metadata",
    "save_plan",
    "sidecar_path",
]

_LOG = logging.getLogger("dinov3_ros.runtime.trt")
#: sidecar format written next to a plan
SIDECAR_FORMAT = "dinov3_ros.plan"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INSTALL_HINT = (
    "TensorRT Python bindings are not installed. On Jetson (JetPack 6) install them with "
    "`sudo apt install python3-libnvinfer` (plus `tensorrt`) and use the system Python, or a venv created "
    "with `python3 -m venv --system-site-packages`; on x86 `pip install tensorrt-cu12` "
    "(pin `tensorrt-cu12<11` for the weakly-typed FP16 flag path)."
)


def import_tensorrt():
    """``import tensorrt`` or raise ImportError with install hints."""
    try:
        import tensorrt as trt
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return trt


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def onnx_sha256(path: str | Path) -> str:
    """sha256 of the ONNX file (and its external-data files, if any)."""
    h = hashlib.sha256()
    p = Path(path)
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    for ext in sorted(p.parent.glob(p.name + ".data*")):
        h.update(ext.read_bytes())
    return h.hexdigest()


def engine_cache_key(
    *,
    gpu_name: str,
    compute_capability: tuple[int, int],
    trt_version: str,
    onnx_hash: str,
    precision: str,
    shapes: dict[str, Any] | None = None,
) -> str:
    """Deterministic key; any change of GPU, CC, TensorRT, ONNX bytes, precision or shapes changes it."""
    payload = {
        "gpu": gpu_name,
        "cc": f"{compute_capability[0]}.{compute_capability[1]}",
        "trt": trt_version,
        "onnx": onnx_hash,
        "precision": precision,
        "shapes": shapes or {},
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() else "-" for c in gpu_name).strip("-")[:32]
    return f"{safe}_sm{compute_capability[0]}{compute_capability[1]}_trt{trt_version}_{precision}_{digest}"


def _profile_shapes(
    input_shape: list[int], batch: tuple[int, int, int], hw: tuple[tuple[int, int], ...] | None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """min/opt/max for ``[B, 3, H, W]``; ``hw`` = (min, opt, max) sizes for dynamic H/W."""
    mn, opt, mx = batch
    if isinstance(input_shape[0], int) and input_shape[0] > 0:  # static batch export
        mn = opt = mx = input_shape[0]
    H, W = input_shape[2], input_shape[3]
    if (H is None or H < 0 or W is None or W < 0) and hw is None:
        raise ValueError("dynamic H/W ONNX needs hw=((Hmin,Wmin),(Hopt,Wopt),(Hmax,Wmax)) for the profile")
    sizes = hw or ((H, W), (H, W), (H, W))
    return (
        (mn, 3, *sizes[0]),
        (opt, 3, *sizes[1]),
        (mx, 3, *sizes[2]),
    )


def calibration_images(source: str | Path | Iterable[np.ndarray], limit: int = 256) -> Iterator[np.ndarray]:
    """RGB uint8 images from a folder, a rosbag2 directory/file (sensor_msgs Image/CompressedImage), or an iterable."""
    import cv2

    if not isinstance(source, (str, Path)):
        for i, im in enumerate(source):
            if i >= limit:
                return
            yield im
        return
    src = Path(source)
    is_bag = src.suffix in (".mcap", ".db3") or (src.is_dir() and (src / "metadata.yaml").exists())
    if not is_bag:
        exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
        files = sorted(f for f in src.rglob("*") if f.suffix.lower() in exts)
        if not files:
            raise FileNotFoundError(f"no images (png/jpg/bmp/tif) under {src}")
        for f in files[:limit]:
            im = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if im is not None:
                yield cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
        return
    from rosbags.highlevel import AnyReader

    n = 0
    with AnyReader([src if src.is_dir() else src.parent]) as reader:
        conns = [c for c in reader.connections if c.msgtype.endswith(("/Image", "/CompressedImage"))]
        if not conns:
            raise ValueError(f"no sensor_msgs/Image or CompressedImage topics in {src}")
        for conn, _t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype.endswith("CompressedImage"):
                im = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
                im = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
            else:
                ch = {"mono8": 1, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(msg.encoding)
                if ch is None:
                    continue
                im = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * ch]
                im = im.reshape(msg.height, msg.width, ch)
                if msg.encoding.startswith("bgr"):
                    im = im[:, :, 2::-1]
                elif ch == 1:
                    im = np.repeat(im, 3, axis=2)
                else:
                    im = im[:, :, :3]
            yield np.ascontiguousarray(im)
            n += 1
            if n >= limit:
                return


def _make_calibrator(trt, batches: list[np.ndarray], cache_file: Path):
    """IInt8EntropyCalibrator2 over preprocessed float32 batches (TensorRT 10 only)."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise RuntimeError("INT8 calibration needs TensorRT 10 (the calibrator API was removed in TRT 11)")

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = batches
            self.i = 0
            self.buf: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names):
            if self.i >= len(self.batches):
                return None
            self.buf = torch.from_numpy(self.batches[self.i]).cuda().contiguous()
            self.i += 1
            return [int(self.buf.data_ptr())]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache) -> None:
            _atomic_write(cache_file, bytes(cache))

    return _Calibrator()


def build_engine(
    onnx_path: str | Path,
    *,
    precision: str = "fp16",
    batch: tuple[int, int, int] = (1, 1, 1),
    hw: tuple[tuple[int, int], ...] | None = None,
    timing_cache: str | Path | None = None,
    workspace_gib: float = 2.0,
    calibration: str | Path | Iterable[np.ndarray] | None = None,
    calibration_batches: int = 16,
    opt_level: int | None = None,
) -> bytes:
    """Serialize a TensorRT engine for ``onnx_path``; returns the plan bytes.

    TRT 10: ``fp16``/``int8`` set builder flags. TRT 11 (no ``BuilderFlag.FP16``): the network is strongly
    typed and precision comes from the ONNX tensor types, so ``fp16`` needs an fp16 export
    (``dinov3-ros export --precision fp16``).
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    try:
        meta = read_metadata(onnx_path)
    except Exception as exc:  # onnx raises protobuf errors for a file that is not ONNX
        raise RuntimeError(
            f"TensorRT could not parse {onnx_path}: not a readable ONNX model ({exc})"
        ) from exc
    strongly_typed = _strongly_typed(trt, precision, meta)
    flags = 0
    st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and st_flag is not None:  # TRT 11 networks are strongly typed without the flag
        flags = 1 << int(st_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)  # kept alive until the build
    if not parser.parse_from_file(str(onnx_path)):
        errs = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    if not strongly_typed:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            if calibration is None:
                raise ValueError("precision int8 needs calibration= (an image folder or a bag)")
            config.set_flag(trt.BuilderFlag.INT8)
    inp = network.get_input(0)
    shapes = _profile_shapes(list(inp.shape), batch, hw)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, *shapes)
    config.add_optimization_profile(profile)
    if precision == "int8" and not strongly_typed:
        _set_calibrator(trt, config, profile, onnx_path, meta, shapes, calibration, calibration_batches)
    cache = None
    if timing_cache is not None:
        tc = Path(timing_cache)
        cache = config.create_timing_cache(tc.read_bytes() if tc.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} ({precision})")
    if cache is not None:
        _atomic_write(Path(timing_cache), bytes(cache.serialize()))
    return bytes(plan)


def _strongly_typed(trt: Any, precision: str, meta: dict[str, Any]) -> bool:
    """Whether the network is built strongly typed (TensorRT 11, or an fp16 export); refuses a
    precision the installed TensorRT cannot build from this ONNX."""
    weak_fp16 = hasattr(trt.BuilderFlag, "FP16")
    onnx_fp16 = meta.get("precision") == "fp16"
    if precision == "int8" and not weak_fp16:
        raise ValueError(
            f"TensorRT {trt.__version__} removed implicit INT8 calibration: use TensorRT 10, or an explicitly "
            "quantized (Q/DQ) ONNX"
        )
    if not weak_fp16 and precision == "fp16" and not onnx_fp16:
        raise ValueError(
            f"TensorRT {trt.__version__} is strongly typed only: export an fp16 ONNX "
            "(`dinov3-ros export --precision fp16`) for an FP16 engine"
        )
    return not weak_fp16 or onnx_fp16


def _set_calibrator(
    trt: Any,
    config: Any,
    profile: Any,
    onnx_path: str | Path,
    meta: dict[str, Any],
    shapes: tuple[tuple[int, ...], ...],
    calibration: str | Path | Iterable[np.ndarray] | None,
    calibration_batches: int,
) -> None:
    """INT8 entropy calibration on preprocessed images at the profile's opt shape."""
    from .preprocess import Preprocessor

    size = (shapes[1][2], shapes[1][3])
    pre = Preprocessor(
        size,
        int(meta.get("patch_size", 16)),
        meta.get("norm_mean", IMAGENET_MEAN),
        meta.get("norm_std", IMAGENET_STD),
    )
    n_per = shapes[1][0]
    imgs = list(calibration_images(calibration, limit=calibration_batches * n_per))
    batches = [pre(imgs[i : i + n_per])[0].numpy() for i in range(0, len(imgs) - n_per + 1, n_per)]
    if not batches:
        raise ValueError(f"not enough calibration images in {calibration}")
    config.int8_calibrator = _make_calibrator(trt, batches, Path(str(onnx_path) + ".int8cache"))
    config.set_calibration_profile(profile)


# ----------------------------------------------------------------------------------------------
# plans: I/O signature, metadata sidecar, loading


class PlanMetadataError(ValueError):
    """A plan's metadata is missing, unreadable or contradicts the engine's I/O tensors."""


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if dt not in table:
        raise PlanMetadataError(f"unsupported TensorRT I/O dtype {dt}")
    return table[dt]


@dataclass(frozen=True)
class PlanTensor:
    """One I/O tensor of an engine: shape with -1 for dynamic dims; the input's profile (min, opt, max)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None


@dataclass(frozen=True)
class PlanSignature:
    """The I/O tensors of a deserialized engine (TensorRT 10 name-based queries)."""

    inputs: tuple[PlanTensor, ...]
    outputs: tuple[PlanTensor, ...]

    @classmethod
    def read(cls, trt, engine) -> PlanSignature:
        ins, outs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            shape = tuple(int(v) for v in engine.get_tensor_shape(name))
            dtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
            if mode == trt.TensorIOMode.INPUT:
                prof = None
                if engine.num_optimization_profiles > 0 and -1 in shape:
                    mn, opt, mx = engine.get_tensor_profile_shape(name, 0)
                    prof = tuple(tuple(int(v) for v in d) for d in (mn, opt, mx))
                ins.append(PlanTensor(name, dtype, shape, prof))  # type: ignore[arg-type]
            elif mode == trt.TensorIOMode.OUTPUT:
                outs.append(PlanTensor(name, dtype, shape))
        return cls(tuple(ins), tuple(outs))

    @property
    def image(self) -> PlanTensor:
        return self.inputs[0]

    def input_hw(self) -> tuple[int, int] | None:
        """The fixed network (H, W), or None when the plan takes several sizes."""
        t = self.image
        H, W = t.shape[2], t.shape[3]
        if H > 0 and W > 0:
            return H, W
        if t.profile is not None and t.profile[0][2:] == t.profile[2][2:]:
            return t.profile[0][2], t.profile[0][3]
        return None

    def output(self, name: str) -> PlanTensor | None:
        return next((t for t in self.outputs if t.name == name), None)

    def check(self, where: str) -> None:
        """One image input ``[B, 3, H, W]`` and a ``patch_tokens`` output, or PlanMetadataError."""
        if len(self.inputs) != 1 or len(self.image.shape) != 4 or self.image.shape[1] != 3:
            got = [(t.name, t.shape) for t in self.inputs]
            raise PlanMetadataError(f"{where}: expected one image input [B, 3, H, W], the plan has {got}")
        tok = self.output("patch_tokens")
        if tok is None or len(tok.shape) != 4:
            got = [(t.name, t.shape) for t in self.outputs]
            raise PlanMetadataError(
                f"{where}: expected a patch_tokens output [B, h, w, C] (a dinov3_ros export), the plan has {got}"
            )


def sidecar_path(plan_path: str | Path) -> Path:
    """``<plan>.json``: the metadata our builds write next to a plan."""
    p = Path(plan_path)
    return p.with_name(p.name + ".json")


def plan_sidecar(
    onnx_path: str | Path, precision: str, trt_version: str, device: torch.device | None
) -> dict:
    """The sidecar of a plan built from our ONNX: its metadata plus the build's facts."""
    meta = dict(read_metadata(onnx_path))
    meta.update(
        format=SIDECAR_FORMAT,
        version=1,
        precision=precision,
        tensorrt=trt_version,
        onnx=Path(onnx_path).name,
        onnx_sha256=onnx_sha256(onnx_path),
    )
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        meta.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}")
    return meta


def save_plan(path: str | Path, plan: bytes, meta: dict[str, Any]) -> Path:
    """Write ``plan`` and its sidecar ``<plan>.json`` (each atomically; the sidecar first, so a plan
    on disk always has its metadata)."""
    path = Path(path)
    _atomic_write(sidecar_path(path), (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    _atomic_write(path, bytes(plan))
    return path


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PlanMetadataError(f"{path}: unreadable plan metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise PlanMetadataError(f"{path}: not a {SIDECAR_FORMAT} sidecar (format={meta.get('format')!r})")
    return meta


def _from_signature(sig: PlanSignature) -> dict[str, Any]:
    """What the engine's I/O tensors tell: input size, patch size, width, output names."""
    meta: dict[str, Any] = {"outputs": [t.name for t in sig.outputs], "input_name": sig.image.name}
    hw = sig.input_hw()
    meta["input_size"] = list(hw) if hw is not None else "dynamic"
    tok = sig.output("patch_tokens")
    if tok is not None and tok.shape[-1] > 0:
        meta["embed_dim"] = tok.shape[-1]
    if hw is not None and tok is not None and tok.shape[1] > 0 and hw[0] % tok.shape[1] == 0:
        meta["patch_size"] = hw[0] // tok.shape[1]
    return meta


def _check_meta(meta: dict[str, Any], sig: PlanSignature, source: str, plan: Path) -> None:
    """Metadata from ``source`` must describe this engine; PlanMetadataError naming both otherwise."""
    found = _from_signature(sig)
    problems = []
    names = set(found["outputs"])
    listed = meta.get("outputs")
    if isinstance(listed, list) and not set(listed) <= names:
        problems.append(f"outputs {sorted(listed)} vs the plan's {sorted(names)}")
    size = meta.get("input_size")
    if isinstance(size, list) and isinstance(found["input_size"], list) and list(size) != found["input_size"]:
        problems.append(f"input_size {size} vs the plan's {found['input_size']}")
    for key in ("patch_size", "embed_dim"):
        if key in meta and key in found and int(meta[key]) != int(found[key]):
            problems.append(f"{key} {meta[key]} vs the plan's {found[key]}")
    if problems:
        raise PlanMetadataError(f"{source} does not describe the plan {plan}: " + "; ".join(problems))


def plan_metadata(
    plan_path: str | Path, sig: PlanSignature, onnx_path: str | Path | None = None
) -> tuple[dict[str, Any], str]:
    """``(metadata, source)`` for a plan (sources in the module docstring's order), checked against the
    engine's I/O tensors; ``source`` names where it came from."""
    plan = Path(plan_path)
    sig.check(str(plan))
    found = _from_signature(sig)
    meta: dict[str, Any] | None = None
    source = ""
    if onnx_path is not None:
        meta, source = dict(read_metadata(onnx_path)), f"the ONNX {onnx_path}"
    elif sidecar_path(plan).exists():
        meta, source = _read_sidecar(sidecar_path(plan)), f"the sidecar {sidecar_path(plan)}"
    else:
        sibling = plan.with_suffix(".onnx")
        if sibling.exists():
            try:
                meta, source = dict(read_metadata(sibling)), f"the ONNX next to the plan ({sibling})"
            except ImportError as e:
                _LOG.warning("cannot read %s (%s): using the plan's I/O tensors only", sibling, e)
    if meta is not None:
        if meta.get("producer", "dinov3_ros") != "dinov3_ros" and meta.get("format") != SIDECAR_FORMAT:
            raise PlanMetadataError(
                f"{source} was not written by dinov3_ros (producer={meta.get('producer')!r})"
            )
        _check_meta(meta, sig, source, plan)
        merged = {**found, **{k: v for k, v in meta.items() if v is not None}}
        merged["outputs"] = found["outputs"]  # the engine's names and order
        if "norm_mean" not in meta or "norm_std" not in meta:
            merged.update(norm_mean=list(IMAGENET_MEAN), norm_std=list(IMAGENET_STD), norm_assumed=True)
        return merged, source
    _LOG.warning(
        "plan %s has no metadata (no %s, no %s): input size, patch size and outputs are read off its I/O "
        "tensors; ImageNet normalisation is assumed",
        plan,
        sidecar_path(plan).name,
        plan.with_suffix(".onnx").name,
    )
    found.update(norm_mean=list(IMAGENET_MEAN), norm_std=list(IMAGENET_STD), norm_assumed=True)
    return found, "the plan's I/O tensors"


@dataclass
class LoadedPlan:
    """A deserialized plan: TensorRT runtime and engine, I/O signature, metadata and its source."""

    runtime: Any
    engine: Any
    signature: PlanSignature
    meta: dict[str, Any]
    source: str


def load_plan(path: str | Path, trt=None, onnx_path: str | Path | None = None) -> LoadedPlan:
    """Deserialize the plan at ``path`` and resolve its metadata (:func:`plan_metadata`)."""
    trt = trt or import_tensorrt()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TensorRT plan not found: {path}")
    side = sidecar_path(path)
    built = _read_sidecar(side) if side.exists() and onnx_path is None else {}
    if built.get("tensorrt") and built["tensorrt"] != trt.__version__:
        _LOG.warning("%s was built with TensorRT %s, this is %s", path, built["tensorrt"], trt.__version__)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        origin = ""
        if built:
            origin = f" It was built with TensorRT {built.get('tensorrt', '?')} on {built.get('gpu', '?')}"
            origin += f" (sm {built.get('compute_capability', '?')});"
        raise RuntimeError(
            f"TensorRT {trt.__version__} could not deserialize {path}.{origin} plans only load with the "
            "TensorRT version and GPU they were built with: rebuild it on this machine "
            "(dinov3-ros export --format tensorrt, or trtexec --onnx=... --saveEngine=...)."
        )
    sig = PlanSignature.read(trt, engine)
    meta, source = plan_metadata(path, sig, onnx_path)
    return LoadedPlan(runtime, engine, sig, meta, source)


def _cuda_device(device: str | torch.device | None) -> torch.device:
    """The CUDA device TensorRT runs on; a clear error for anything else."""
    dev = torch.device(device or "cuda")
    if dev.type != "cuda":
        raise ValueError(f"TensorRT runs on CUDA devices, got device={str(dev)!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT backend needs a CUDA device, and CUDA is not available")
    return dev


def _stream_handle(device: torch.device) -> int:
    return int(torch.cuda.current_stream(device).cuda_stream) if device.type == "cuda" else 0


class TrtEngine(Engine):
    """A TensorRT engine run on torch CUDA buffers: a serialized plan (``engine_path``), or built from
    one of our ONNX exports and cached (``onnx_path``)."""

    def __init__(
        self,
        onnx_path: str | Path | None = None,
        *,
        engine_path: str | Path | None = None,
        precision: str | None = None,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        max_batch: int = 1,
        opt_batch: int | None = None,
        hw: tuple[tuple[int, int], ...] | None = None,
        calibration: str | Path | None = None,
        workspace_gib: float = 2.0,
        input_size: tuple[int, int] | None = None,
        **_ignored: Any,
    ) -> None:
        trt = import_tensorrt()
        self.trt = trt
        self.device = _cuda_device(device)
        if onnx_path is None and engine_path is None:
            raise ValueError("give engine_path= (a serialized plan) or onnx_path= (built and cached)")
        if engine_path is None:
            engine_path = self._build_cached(
                onnx_path,
                precision or "fp16",
                cache_dir,
                max_batch,
                opt_batch,
                hw,
                calibration,
                workspace_gib,
            )
            onnx_for_meta = None  # the cached plan's sidecar holds the ONNX metadata
        else:
            onnx_for_meta = onnx_path
        plan = load_plan(engine_path, trt, onnx_for_meta)
        self.engine_path = Path(engine_path)
        self.runtime, self.engine, self.signature = plan.runtime, plan.engine, plan.signature
        self.context = self.engine.create_execution_context()
        self.inputs = [t.name for t in plan.signature.inputs]
        self.outputs = [t.name for t in plan.signature.outputs]
        self._in_dtype = plan.signature.image.dtype
        self._out_dtypes = {t.name: t.dtype for t in plan.signature.outputs}
        meta = plan.meta
        built = meta.get("precision") if meta.get("format") == SIDECAR_FORMAT else None
        prec = built or precision or "unknown"
        if built and precision and precision != built:
            _LOG.warning("%s is a %s plan; precision=%r does not apply", self.engine_path, built, precision)
        self.info = info_from_metadata(meta, "tensorrt", prec, str(self.device))
        if input_size is not None and self.info.input_size is not None:
            if tuple(input_size) != tuple(self.info.input_size):
                raise PlanMetadataError(
                    resolution_mismatch(self.engine_path, self.info.input_size, tuple(input_size))
                )
        self.info.outputs = tuple(self.outputs)
        self.info.extra = {
            "engine": str(self.engine_path),
            "trt_version": trt.__version__,
            "metadata": plan.source,
            "norm_assumed": bool(meta.get("norm_assumed", False)),
        }

    def _build_cached(
        self,
        onnx_path: str | Path,
        precision: str,
        cache_dir: str | Path | None,
        max_batch: int,
        opt_batch: int | None,
        hw: tuple[tuple[int, int], ...] | None,
        calibration: str | Path | None,
        workspace_gib: float,
    ) -> Path:
        """The cached plan for ``onnx_path`` (built, with its sidecar, on a cache miss)."""
        trt = self.trt
        cache = Path(cache_dir or Path.home() / ".cache" / "dinov3_ros" / "trt")
        props = torch.cuda.get_device_properties(self.device)
        cc = (props.major, props.minor)
        shapes = {"batch": [1, opt_batch or max_batch, max_batch], "hw": hw}
        key = engine_cache_key(
            gpu_name=props.name,
            compute_capability=cc,
            trt_version=trt.__version__,
            onnx_hash=onnx_sha256(onnx_path),
            precision=precision,
            shapes=shapes,
        )
        engine_path = cache / f"{key}.engine"
        if not engine_path.exists() or not sidecar_path(engine_path).exists():
            timing = cache / f"timing_sm{cc[0]}{cc[1]}_trt{trt.__version__}.cache"
            plan = build_engine(
                onnx_path,
                precision=precision,
                batch=(1, opt_batch or max_batch, max_batch),
                hw=hw,
                timing_cache=timing,
                workspace_gib=workspace_gib,
                calibration=calibration,
            )
            save_plan(engine_path, plan, plan_sidecar(onnx_path, precision, trt.__version__, self.device))
        return engine_path

    def max_batch(self) -> int | None:
        """The largest batch the plan takes (its profile's max, or its fixed batch); None if unknown."""
        t = self.signature.image
        if t.shape[0] > 0:
            return int(t.shape[0])
        return int(t.profile[2][0]) if t.profile is not None else None

    def _run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run ``batch``; a batch larger than the plan's maximum runs in chunks written straight into
        the full-batch outputs (no concatenation)."""
        x = batch.to(self.device, self._in_dtype).contiguous()
        B = int(x.shape[0])
        step = min(B, self.max_batch() or B)
        outs: dict[str, torch.Tensor] | None = None
        for i in range(0, B, step):
            chunk = x[i : i + step]
            shapes = self._set_input(chunk)
            if outs is None:
                outs = {
                    n: torch.empty((B, *shp[1:]), dtype=self._out_dtypes[n], device=self.device)
                    for n, shp in shapes.items()
                }
            for n, t in outs.items():
                self.context.set_tensor_address(n, t[i : i + len(chunk)].data_ptr())
            if not self.context.execute_async_v3(_stream_handle(self.device)):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.engine_path.name}")
        assert outs is not None
        return outs

    def _set_input(self, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Bind ``x`` as the input; returns the output shapes for it."""
        ctx, name = self.context, self.inputs[0]
        if not ctx.set_input_shape(name, tuple(x.shape)):
            prof = self.signature.image.profile
            raise ValueError(
                f"input shape {tuple(x.shape)} does not fit the plan {self.engine_path.name} "
                f"(shape {self.signature.image.shape}, profile min/opt/max {prof})"
            )
        ctx.set_tensor_address(name, x.data_ptr())
        return {n: tuple(int(v) for v in ctx.get_tensor_shape(n)) for n in self.outputs}

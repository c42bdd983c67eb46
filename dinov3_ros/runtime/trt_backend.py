"""TensorRT backend: build from our ONNX (TRT 10 weakly typed or TRT 11 strongly typed), cache, execute.

Name-based TRT 10 API throughout (``set_tensor_address`` + ``execute_async_v3`` on torch CUDA buffers).
Engines are cached under a key of GPU name + compute capability + TensorRT version + ONNX sha256 +
precision + shape profile; the timing cache is persisted next to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Engine
from .ort_backend import info_from_metadata, read_metadata

__all__ = [
    "TrtEngine",
    "build_engine",
    "calibration_images",
    "engine_cache_key",
    "import_tensorrt",
    "onnx_sha256",
]

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
    weak_fp16 = hasattr(trt.BuilderFlag, "FP16")
    meta = read_metadata(onnx_path)
    onnx_fp16 = meta.get("precision") == "fp16"
    strongly_typed = not weak_fp16 or onnx_fp16
    flags = 0
    st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and st_flag is not None:  # TRT 11 networks are strongly typed without the flag
        flags = 1 << int(st_flag)
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
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
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
        from .preprocess import Preprocessor

        size = (shapes[1][2], shapes[1][3])
        pre = Preprocessor(
            size,
            int(meta.get("patch_size", 16)),
            meta.get("norm_mean", (0.485, 0.456, 0.406)),
            meta.get("norm_std", (0.229, 0.224, 0.225)),
        )
        n_per = shapes[1][0]
        imgs = list(calibration_images(calibration, limit=calibration_batches * n_per))
        batches = [pre(imgs[i : i + n_per])[0].numpy() for i in range(0, len(imgs) - n_per + 1, n_per)]
        if not batches:
            raise ValueError(f"not enough calibration images in {calibration}")
        config.int8_calibrator = _make_calibrator(trt, batches, Path(str(onnx_path) + ".int8cache"))
        config.set_calibration_profile(profile)
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
    return table[dt]


class TrtEngine(Engine):
    """A cached TensorRT engine for one ONNX export, run on torch CUDA buffers."""

    def __init__(
        self,
        onnx_path: str | Path | None = None,
        *,
        engine_path: str | Path | None = None,
        precision: str = "fp16",
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        max_batch: int = 1,
        opt_batch: int | None = None,
        hw: tuple[tuple[int, int], ...] | None = None,
        calibration: str | Path | None = None,
        workspace_gib: float = 2.0,
        **_ignored: Any,
    ) -> None:
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRT backend needs a CUDA device")
        self.trt = trt
        self.device = torch.device(device or "cuda")
        if onnx_path is None and engine_path is None:
            raise ValueError("give onnx_path= (built and cached) or engine_path= (a serialized plan)")
        meta = read_metadata(onnx_path) if onnx_path else {}
        if engine_path is None:
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
            if not engine_path.exists():
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
                _atomic_write(engine_path, plan)
        self.engine_path = Path(engine_path)
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"could not deserialize {self.engine_path}: built by another TensorRT version or GPU? "
                "Delete it to rebuild."
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.inputs[0]))
        self.info = info_from_metadata(meta, "tensorrt", precision, str(self.device))
        self.info.outputs = tuple(self.outputs)
        self.info.extra = {"engine": str(self.engine_path), "trt_version": trt.__version__}

    def _run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        x = batch.to(self.device, self._in_dtype).contiguous()
        ctx = self.context
        name = self.inputs[0]
        ctx.set_input_shape(name, tuple(x.shape))
        ctx.set_tensor_address(name, x.data_ptr())
        outs: dict[str, torch.Tensor] = {}
        for n in self.outputs:
            shape = tuple(ctx.get_tensor_shape(n))
            t = torch.empty(
                shape, dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(n)), device=self.device
            )
            ctx.set_tensor_address(n, t.data_ptr())
            outs[n] = t
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return outs

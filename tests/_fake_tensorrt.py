"""A strict stand-in for the ``tensorrt`` module at its boundary (TensorRT cannot be installed here).

It implements only the TensorRT 10 Python calls a plan's loading and execution use, with the real
names, argument names and return types (``Runtime(logger).deserialize_cuda_engine(serialized_engine)``
-> engine or None; ``ICudaEngine.num_io_tensors``, ``get_tensor_name(index)``, ``get_tensor_mode(name)``,
``get_tensor_shape(name)`` / ``get_tensor_profile_shape(name, profile_index)`` -> ``Dims``,
``get_tensor_dtype(name)``, ``num_optimization_profiles``, ``create_execution_context(strategy)``;
``IExecutionContext.set_input_shape(name, shape)`` -> bool, ``get_tensor_shape(name)``,
``set_tensor_address(name, memory)`` -> bool, ``execute_async_v3(stream_handle)`` -> bool). Anything
else - the builder, the ONNX parser, an unknown attribute or tensor name - fails: every class has
``__slots__`` and the module object holds nothing more.

A "plan" is ``MAGIC`` + JSON (see :func:`make_plan`): its I/O tensors and the TensorRT version it was
"built" with (a plan from another version deserializes to None, as with the real runtime). Executing it
reads the input from, and writes each output to, the addresses it was given - host memory here, where
the CUDA buffers are replaced too - computing a fixed function of the image, so a test can check that
the right buffers went to the right tensors:

- ``patch_tokens[b, i, j, c] = (c + 1) * mean of channel c % 3 over patch (i, j)``
- ``cls[b, c] = mean over patches of patch_tokens[b, :, :, c]``
- ``depth[b, 0, y, x] = 1 + mean over channels of image[b, :, y, x]``
"""

from __future__ import annotations

import ctypes
import json
import types

import numpy as np

MAGIC = b"FAKE-TRT-PLAN\n"
VERSION = "10.3.0"


class DataType:
    __slots__ = ("itemsize", "name", "np")

    def __init__(self, name: str, np_dtype: str) -> None:
        self.name, self.np = name, np.dtype(np_dtype)
        self.itemsize = self.np.itemsize

    def __repr__(self) -> str:
        return f"DataType.{self.name.upper()}"


_DTYPES = {
    n: DataType(n, d)
    for n, d in [
        ("float32", "float32"),
        ("float16", "float16"),
        ("int32", "int32"),
        ("int8", "int8"),
        ("bool", "bool"),
        ("int64", "int64"),
        ("uint8", "uint8"),
    ]
}


class Dims:
    """``tensorrt.Dims``: a sequence of ints (not a tuple)."""

    __slots__ = ("_d",)

    def __init__(self, d) -> None:
        self._d = tuple(int(v) for v in d)

    def __len__(self) -> int:
        return len(self._d)

    def __getitem__(self, i):
        return self._d[i]

    def __iter__(self):
        return iter(self._d)

    def __repr__(self) -> str:
        return f"Dims{self._d}"


class _Enum:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class TensorIOMode:
    NONE = _Enum("NONE")
    INPUT = _Enum("INPUT")
    OUTPUT = _Enum("OUTPUT")


class ExecutionContextAllocationStrategy:
    STATIC = _Enum("STATIC")
    ON_PROFILE_CHANGE = _Enum("ON_PROFILE_CHANGE")
    USER_MANAGED = _Enum("USER_MANAGED")


class Logger:
    __slots__ = ("min_severity",)

    class Severity:
        INTERNAL_ERROR = _Enum("INTERNAL_ERROR")
        ERROR = _Enum("ERROR")
        WARNING = _Enum("WARNING")
        INFO = _Enum("INFO")
        VERBOSE = _Enum("VERBOSE")

    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self, min_severity=Severity.WARNING) -> None:
        assert isinstance(min_severity, _Enum), min_severity
        self.min_severity = min_severity


def make_plan(tensors: list[dict], version: str = VERSION) -> bytes:
    """Plan bytes: ``tensors`` = [{name, mode: input|output, dtype, shape (-1 dynamic), profile?}]."""
    return MAGIC + json.dumps({"version": version, "tensors": tensors}).encode()


def vit_plan(
    H: int = 64,
    W: int = 80,
    patch: int = 16,
    C: int = 12,
    depth: bool = True,
    dtype: str = "float32",
    dynamic_batch: bool = True,
    version: str = VERSION,
    max_batch: int = 2,
) -> bytes:
    """The I/O of one of our exports: image [B,3,H,W] -> patch_tokens [B,h,w,C], cls [B,C](, depth);
    a dynamic batch has the profile 1 / 1 / ``max_batch``."""
    B = -1 if dynamic_batch else 1
    t = [
        {
            "name": "image",
            "mode": "input",
            "dtype": dtype,
            "shape": [B, 3, H, W],
            "profile": [[1, 3, H, W], [1, 3, H, W], [max_batch, 3, H, W]] if dynamic_batch else None,
        },
        {"name": "patch_tokens", "mode": "output", "dtype": dtype, "shape": [B, H // patch, W // patch, C]},
        {"name": "cls", "mode": "output", "dtype": dtype, "shape": [B, C]},
    ]
    if depth:
        t.append({"name": "depth", "mode": "output", "dtype": dtype, "shape": [B, 1, H, W]})
    return make_plan(t, version)


class Runtime:
    __slots__ = ("logger",)

    def __init__(self, logger: Logger) -> None:
        assert isinstance(logger, Logger), f"Runtime(logger) takes a tensorrt.Logger, got {type(logger)}"
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        data = bytes(memoryview(serialized_engine))
        if not data.startswith(MAGIC):
            return None  # the real runtime logs the error and returns None
        spec = json.loads(data[len(MAGIC) :])
        if spec["version"] != VERSION:
            return None
        return ICudaEngine(spec["tensors"])


class ICudaEngine:
    __slots__ = ("_order", "_t")

    def __init__(self, tensors: list[dict]) -> None:
        self._t = {t["name"]: t for t in tensors}
        self._order = [t["name"] for t in tensors]

    def _get(self, name: str) -> dict:
        assert isinstance(name, str), f"tensor names are str, got {type(name)}"
        if name not in self._t:
            raise KeyError(f"fake TensorRT: no I/O tensor {name!r}")
        return self._t[name]

    @property
    def num_io_tensors(self) -> int:
        return len(self._order)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index: int) -> str:
        assert isinstance(index, int)
        return self._order[index]

    def get_tensor_mode(self, name: str):
        assert isinstance(name, str)
        if name not in self._t:
            return TensorIOMode.NONE
        return TensorIOMode.INPUT if self._t[name]["mode"] == "input" else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._get(name)["shape"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return _DTYPES[self._get(name)["dtype"]]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        t = self._get(name)
        assert profile_index == 0 and t["mode"] == "input" and t.get("profile"), (name, profile_index)
        return [Dims(d) for d in t["profile"]]

    def create_execution_context(
        self, strategy=ExecutionContextAllocationStrategy.STATIC
    ) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    __slots__ = ("_addr", "_engine", "_in_shape", "executions")

    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine
        self._addr: dict[str, int] = {}
        self._in_shape: tuple[int, ...] | None = None
        self.executions = 0

    def set_input_shape(self, name: str, shape) -> bool:
        t = self._engine._get(name)
        assert t["mode"] == "input"
        shape = tuple(int(v) for v in shape)
        fixed = t["shape"]
        prof = t.get("profile")
        ok = len(shape) == len(fixed) and all(f in (-1, s) for f, s in zip(fixed, shape))
        if prof is not None:
            ok = ok and all(lo <= s <= hi for lo, s, hi in zip(prof[0], shape, prof[2]))
        if ok:
            self._in_shape = shape
        return ok

    def get_tensor_shape(self, name: str) -> Dims:
        t = self._engine._get(name)
        if t["mode"] == "input":
            return Dims(self._in_shape or t["shape"])
        assert self._in_shape is not None, "output shapes need the input shape first (set_input_shape)"
        B = self._in_shape[0]
        return Dims([B if d == -1 else d for d in t["shape"]])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._engine._get(name)
        assert isinstance(memory, int) and memory > 0, (
            f"set_tensor_address needs a device pointer, got {memory!r}"
        )
        self._addr[name] = memory
        return True

    def _array(self, name: str) -> np.ndarray:
        dt = self._engine.get_tensor_dtype(name)
        shape = tuple(self.get_tensor_shape(name))
        n = int(np.prod(shape))
        raw = (ctypes.c_uint8 * (n * dt.itemsize)).from_address(self._addr[name])
        return np.frombuffer(raw, dtype=dt.np).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert isinstance(stream_handle, int), f"stream_handle is an int, got {type(stream_handle)}"
        names = self._engine._order
        missing = [n for n in names if n not in self._addr]
        if self._in_shape is None or missing:
            return False  # the real context reports the error and returns False
        x = self._array("image").astype(np.float32)
        B, _, H, _ = x.shape
        tok = self._array("patch_tokens")
        h, w, C = tok.shape[1:]
        p = H // h
        means = x.reshape(B, 3, h, p, w, p).mean(axis=(3, 5))  # [B, 3, h, w]
        c = np.arange(C)
        vals = means[:, c % 3].transpose(0, 2, 3, 1) * (c + 1)
        tok[...] = vals.astype(tok.dtype)
        if "cls" in self._engine._t:
            cls = self._array("cls")
            cls[...] = vals.mean(axis=(1, 2)).astype(cls.dtype)
        if "depth" in self._engine._t:
            d = self._array("depth")
            d[...] = (1.0 + x.mean(axis=1, keepdims=True)).astype(d.dtype)
        self.executions += 1
        return True


def module() -> types.ModuleType:
    """A fresh module object named ``tensorrt`` holding exactly the fake API."""
    m = types.ModuleType("tensorrt")
    m.__version__ = VERSION
    for name, obj in {
        "Logger": Logger,
        "Runtime": Runtime,
        "ICudaEngine": ICudaEngine,
        "IExecutionContext": IExecutionContext,
        "TensorIOMode": TensorIOMode,
        "ExecutionContextAllocationStrategy": ExecutionContextAllocationStrategy,
        "Dims": Dims,
        "DataType": DataType,
        **_DTYPES,
    }.items():
        setattr(m, name, obj)
    return m


# -- the builder side (opt-in: ``module(builder=True)``) ------------------------------------------
class BuilderFlag:
    FP16 = _Enum("FP16")
    INT8 = _Enum("INT8")


class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 1  # an int, as the real enum converts with int()


class MemoryPoolType:
    WORKSPACE = _Enum("WORKSPACE")


class ITensor:
    __slots__ = ("name", "shape")

    def __init__(self, name: str, shape) -> None:
        self.name, self.shape = name, Dims(shape)


class INetworkDefinition:
    __slots__ = ("flags", "inputs", "outputs", "parsed")

    def __init__(self, flags: int) -> None:
        assert isinstance(flags, int), flags
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.parsed = False

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


class OnnxParser:
    """Reads an ONNX file's graph inputs/outputs (with ``onnx``); a file that is not ONNX is an error."""

    __slots__ = ("_errors", "network")

    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        assert isinstance(network, INetworkDefinition) and isinstance(logger, Logger)
        self.network = network
        self._errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> str:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        import onnx

        assert isinstance(model, str)
        try:
            proto = onnx.shape_inference.infer_shapes(onnx.load(model))  # as the builder infers them
        except Exception as exc:  # noqa: BLE001 - the real parser reports, it does not raise
            self._errors.append(f"ModelImporter: failed to parse {model}: {exc}")
            return False

        def dims(vi) -> list[int]:
            return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]

        init = {i.name for i in proto.graph.initializer}
        self.network.inputs = [ITensor(i.name, dims(i)) for i in proto.graph.input if i.name not in init]
        self.network.outputs = [ITensor(o.name, dims(o)) for o in proto.graph.output]
        self.network.parsed = True
        return True


class IOptimizationProfile:
    __slots__ = ("shapes",)

    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:
        self.shapes[input] = [list(min), list(opt), list(max)]


class ITimingCache:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return b"FAKE-TIMING-CACHE" if not self.data else self.data + b"+"


class IBuilderConfig:
    __slots__ = ("builder_optimization_level", "flags", "pools", "profiles", "timing_cache")

    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self.builder_optimization_level = 3

    def set_flag(self, flag) -> None:
        assert isinstance(flag, _Enum)
        self.flags.add(flag.name)

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        assert isinstance(pool, _Enum) and isinstance(pool_size, int)
        self.pools[pool.name] = pool_size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True


class Builder:
    """Builds a fake plan from the parsed network's I/O and the first profile (records the flags)."""

    __slots__ = ("logger",)

    def __init__(self, logger: Logger) -> None:
        assert isinstance(logger, Logger)
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        if not network.parsed or not config.profiles:
            return None
        prof = config.profiles[0].shapes
        tensors = [
            {
                "name": t.name,
                "mode": "input",
                "dtype": "float32",
                "shape": list(t.shape),
                "profile": prof.get(t.name),
            }
            for t in network.inputs
        ] + [
            {"name": t.name, "mode": "output", "dtype": "float32", "shape": list(t.shape)}
            for t in network.outputs
        ]
        data = json.loads(make_plan(tensors)[len(MAGIC) :])
        data["built"] = {"flags": sorted(config.flags), "network_flags": network.flags, "pools": config.pools}
        return MAGIC + json.dumps(data).encode()


def built_with(plan: bytes) -> dict:
    """What a fake build recorded: builder flags, network creation flags, memory pools."""
    return json.loads(plan[len(MAGIC) :])["built"]


def builder_module(strongly_typed_only: bool = False) -> types.ModuleType:
    """``module()`` plus the builder API (TensorRT 10; ``strongly_typed_only``: TensorRT 11, which has no
    ``BuilderFlag.FP16``/``INT8``)."""
    m = module()
    flags = type("BuilderFlag", (), {}) if strongly_typed_only else BuilderFlag
    for name, obj in {
        "Builder": Builder,
        "BuilderFlag": flags,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
        "MemoryPoolType": MemoryPoolType,
        "OnnxParser": OnnxParser,
        "IBuilderConfig": IBuilderConfig,
    }.items():
        setattr(m, name, obj)
    return m

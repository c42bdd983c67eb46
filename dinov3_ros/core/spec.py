"""Which model to run: one spec and one weight resolver for the node's parameters, the bag tool, eval
and export.

``weights`` is ``random:<arch>`` (random initialisation with a fixed seed, for tests and benchmarks),
the name of a registry entry with shipped weights (``default``; ``models/registry.yaml``) or a file
(checkpoint, ONNX file or TensorRT plan). ``depth_head`` and ``objects_head`` are each ``auto`` (the
registry entry's shipped head; none for a file), ``none`` or a head file.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # int8: onnxruntime only


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``weights`` value: ``kind`` is ``random`` (``value`` = arch), ``registry`` (entry name)
    or ``file`` (path)."""

    kind: str
    value: str

    @staticmethod
    def parse(text: str) -> WeightsSpec:
        """Parse a ``weights`` value; ``ValueError`` names the problem."""
        text = str(text or "").strip()
        if not text:
            raise ValueError("weights is empty: give a file, a registry name ('default') or 'random:<arch>'")
        if text.startswith("random:"):
            arch = text.split(":", 1)[1]
            if not arch:
                raise ValueError("weights 'random:' needs an architecture, e.g. random:vits16")
            return WeightsSpec("random", arch)
        path = Path(text).expanduser()
        if "/" not in text and not path.suffix and not path.exists():
            return WeightsSpec("registry", text)
        return WeightsSpec("file", str(path))

    def __str__(self) -> str:
        return f"random:{self.value}" if self.kind == "random" else self.value

    def path(self) -> Path | None:
        """The weights file (``None`` for random weights); ``FileNotFoundError`` names what is missing."""
        if self.kind == "random":
            return None
        if self.kind == "registry":
            return _registry_entry(self.value).weights_path()
        p = Path(self.value)
        if not p.exists():
            raise FileNotFoundError(f"weights file not found: {p}")
        return p

    def depth_head(self, choice: str | None = "auto") -> Path | str | None:
        """The depth head for ``choice``: a file path, ``"random"`` (random weights get a random linear
        head) or ``None``; ``auto`` = the registry entry's shipped head."""
        if choice == "auto" and self.kind == "random":
            return "random"
        return self._head(choice, "depth")

    def objects_head(self, choice: str | None = "auto") -> Path | None:
        """The objects head (TokenCut's learned projection) for ``choice``: a file path or ``None``;
        ``auto`` = the registry entry's shipped head (random weights get none)."""
        return self._head(choice, "objects")

    def _head(self, choice: str | None, kind: str) -> Path | None:
        if choice in (None, "", "none"):
            return None
        if choice != "auto":
            p = Path(choice).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"{kind} head file not found: {p}")
            return p
        if self.kind == "registry":
            return _registry_entry(self.value).head_path(kind)
        return None

    def content_hash(self) -> str:
        """SHA-256 of the weights file's bytes (``random:<arch>`` for random weights): what a resumed
        run must match, whatever the file is called."""
        p = self.path()
        return str(self) if p is None else file_sha256(p)


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, or of every file of a directory in name order (cached per
    path, size and modification time)."""
    p = Path(path).resolve()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    key = (str(p), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    return _sha256_of(key)


@functools.lru_cache(maxsize=16)
def _sha256_of(key: tuple[str, tuple[tuple[str, int, int], ...]]) -> str:
    p = Path(key[0])
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _registry_entry(name: str) -> Any:
    from dinov3_ros.models.registry import get_entry

    try:
        return get_entry(name)
    except KeyError as exc:
        raise FileNotFoundError(
            f"weights {name!r} is neither a file nor a registry entry ({exc.args[0]})"
        ) from None


@dataclass(frozen=True)
class ModelSpec:
    """Everything that selects and builds the engine (node parameters, ``--weights``/``--backend``/...)."""

    weights: str = "default"
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    resolution: tuple[int, int] | None = None
    depth_head: str = "auto"
    cuda_graphs: bool = False
    objects_head: str = "auto"

    def validate(self) -> ModelSpec:
        """Return self, or raise ``ValueError`` naming the first bad setting (no file is opened)."""
        WeightsSpec.parse(self.weights)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "int8" and self.backend != "onnxruntime":
            raise ValueError(
                f"precision int8 needs backend 'onnxruntime' (INT8 on CPU), got {self.backend!r}"
            )
        dev = str(self.device)
        if not (dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {dev!r}")
        if self.resolution is not None:
            h, w = self.resolution
            if h <= 0 or w <= 0 or h % 16 or w % 16:
                raise ValueError(f"resolution must be positive multiples of 16, got {h}x{w}")
        return self

    @property
    def weights_spec(self) -> WeightsSpec:
        return WeightsSpec.parse(self.weights)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resolution"] = list(self.resolution) if self.resolution is not None else None
        return d


def parse_resolution(text: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"480x640"``, ``"480,640"`` or ``[480, 640]`` -> ``(480, 640)``; ``ValueError`` otherwise."""
    if isinstance(text, str):
        parts = text.lower().replace(",", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"resolution must be HxW (e.g. 480x640), got {text!r}")
        vals = [int(p) for p in parts]
    else:
        vals = [int(v) for v in text]
        if len(vals) != 2:
            raise ValueError(f"resolution must be [H, W], got {text!r}")
    return vals[0], vals[1]


def add_model_arguments(parser: Any, *, device_default: str = "cpu") -> Any:
    """The model options every command shares (``--weights --depth-head --objects-head --backend --device
    --precision --resolution --cuda-graphs``); returns the argument group."""
    import argparse

    g = parser.add_argument_group("model")
    g.add_argument(
        "--weights",
        default="default",
        help="checkpoint/engine file, a registry name ('default') or 'random:<arch>'",
    )
    g.add_argument(
        "--depth-head", default="auto", help="depth head file; 'auto' = the registry model's head; 'none'"
    )
    g.add_argument(
        "--objects-head",
        default="auto",
        help="objects head file (TokenCut's learned projection); 'auto' = the registry model's head; 'none'",
    )
    g.add_argument("--backend", default="torch", choices=BACKENDS, help="inference backend")
    g.add_argument("--device", default=device_default, help="cpu, cuda or cuda:N")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS, help="int8: onnxruntime on CPU only")
    g.add_argument("--resolution", default=None, help="network input HxW, multiples of 16 (e.g. 448x448)")
    g.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch backend on CUDA: replay the engine as a CUDA graph per batch shape",
    )
    return g


def model_spec_from_args(
    args: Any, device: str | None = None, resolution: tuple[int, int] | None = None
) -> ModelSpec:
    """The :class:`ModelSpec` of :func:`add_model_arguments`' options (validated)."""
    res = (
        resolution
        if resolution is not None
        else (parse_resolution(args.resolution) if args.resolution else None)
    )
    return ModelSpec(
        weights=args.weights,
        backend=args.backend,
        device=device or args.device,
        precision=args.precision,
        resolution=res,
        depth_head=args.depth_head or "none",
        cuda_graphs=bool(args.cuda_graphs),
        objects_head=args.objects_head or "none",
    ).validate()

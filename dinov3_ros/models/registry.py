"""Read ``models/registry.yaml``: released checkpoints (file name, hash prefix, HF repo, normalisation)
and our own shipped models (``default``)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..paths import models_dir

#: official file names end in ``-<first 8 hex of sha256>.pth``
OFFICIAL_NAME_RE = re.compile(r"^(dinov3_[a-z0-9_]+?)-([0-9a-f]{8})\.pth$")


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry."""

    name: str
    arch: str
    params: int
    embed_dim: int
    patch_size: int
    normalization: str
    norm_mean: tuple[float, float, float]
    norm_std: tuple[float, float, float]
    license: str
    file: str | None = None
    sha256_prefix: str | None = None
    url_dir: str | None = None
    hf_repo: str | None = None
    timm: str | None = None
    weights: str | None = None  # shipped weights, relative to models_dir()
    depth_head: str | None = (
        None  # shipped depth head (dinov3_ros.heads.depth file), relative to models_dir()
    )
    untie_global_and_local_cls_norm: bool = False
    #: shipped objects head (dinov3_ros.heads.objects_head file), relative to models_dir()
    objects_head: str | None = None

    def head_path(self, kind: str) -> Path | None:
        """Absolute path of the shipped ``depth`` or ``objects`` head, or None when the entry ships none."""
        rel = {"depth": self.depth_head, "objects": self.objects_head}[kind]
        if not rel:
            return None
        from dinov3_ros.paths import models_dir

        p = models_dir() / rel
        if not p.is_file():
            raise FileNotFoundError(f"registry entry {self.name!r}: {kind} head {p} is missing")
        return p

    def weights_path(self) -> Path:
        """Absolute path of the shipped weights; FileNotFoundError (naming the entry) if absent."""
        if not self.weights:
            raise FileNotFoundError(
                f"registry entry {self.name!r} ships no weights: the official file {self.file!r} is gated "
                f"(DINOv3 License); download it from Meta and pass its path instead"
            )
        path = models_dir() / self.weights
        if not path.is_file():
            raise FileNotFoundError(
                f"weights for registry entry {self.name!r} ({self.arch}) not found at {path}; "
                "they are produced by training/ and shipped in models/" + self.weights.split("/")[0] + "/"
            )
        return path


def registry_path() -> Path:
    """Path of ``registry.yaml``."""
    return models_dir() / "registry.yaml"


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or "models" not in data:
        raise ValueError(f"{path}: not a model registry (no 'models' mapping)")
    return data


def load_registry(path: str | Path | None = None) -> dict[str, ModelEntry]:
    """All entries by name."""
    p = Path(path) if path is not None else registry_path()
    data = _load(str(p))
    norms = data.get("normalizations", {})
    lic = data.get("licenses", {})
    out: dict[str, ModelEntry] = {}
    for name, e in data["models"].items():
        nname = e["normalization"]
        if nname not in norms:
            raise ValueError(f"{p}: entry {name!r} uses unknown normalization {nname!r}")
        out[name] = ModelEntry(
            name=name,
            arch=e["arch"],
            params=int(e["params"]),
            embed_dim=int(e["embed_dim"]),
            patch_size=int(e["patch_size"]),
            normalization=nname,
            norm_mean=tuple(float(v) for v in norms[nname]["mean"]),
            norm_std=tuple(float(v) for v in norms[nname]["std"]),
            license=str(lic.get(e.get("license"), e.get("license", ""))).strip(),
            file=e.get("file"),
            sha256_prefix=e.get("sha256_prefix"),
            url_dir=e.get("url_dir"),
            hf_repo=e.get("hf_repo"),
            timm=e.get("timm"),
            weights=e.get("weights"),
            depth_head=e.get("depth_head"),
            objects_head=e.get("objects_head"),
            untie_global_and_local_cls_norm=bool(e.get("untie_global_and_local_cls_norm", False)),
        )
    return out


def get_entry(name: str) -> ModelEntry:
    """Entry by name; KeyError listing the valid names."""
    reg = load_registry()
    if name not in reg:
        raise KeyError(f"no registry entry {name!r}; known: {', '.join(reg)}")
    return reg[name]


def entry_for_file(filename: str | Path) -> ModelEntry | None:
    """The entry whose official file name (or ``<stem>-<hash>``) matches ``filename``'s base name."""
    base = Path(filename).name
    reg = load_registry()
    for e in reg.values():
        if e.file and e.file == base:
            return e
    m = OFFICIAL_NAME_RE.match(base)
    if m:
        for e in reg.values():
            if e.file and e.file.startswith(m.group(1) + "-"):
                return e
    return None

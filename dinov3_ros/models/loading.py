"""Load DINOv3 backbones from official ``.pth``, timm state_dicts and Hugging Face checkpoints.

Only tensors are ever deserialised (``torch.load(weights_only=True)`` or safetensors). Errors name the
file, the expected arch, the first missing / unexpected / mis-shaped keys and the likely cause.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .archs import ARCHS, SAT_MEAN, SAT_STD, ArchSpec, build_backbone, resolve_arch
from .convert import detect_format, to_official
from .registry import OFFICIAL_NAME_RE, entry_for_file, get_entry, load_registry

StateDict = dict[str, Tensor]

_HF_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the requested backbone."""


class HashMismatchError(CheckpointError):
    """The file's sha256 does not start with the 8-hex prefix carried in its official name."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled objects other than tensors; refused (weights_only)."""


class TruncatedCheckpointError(CheckpointError):
    """The file is truncated or corrupt."""


class ArchMismatchError(CheckpointError):
    """The state_dict keys/shapes do not match the requested arch."""


@dataclass
class CheckpointInfo:
    """What was learnt about a checkpoint while reading it."""

    path: Path
    format: str = "?"  # official | timm | hf | official_convnext | hf_convnext
    container: str = "?"  # pth | safetensors | hf-dir | bin
    arch: str | None = None
    arch_source: str = ""  # argument | file name | metadata | shapes
    hash_status: str = "not checked"  # ok | mismatch | no hash in name | not checked
    expected_hash: str | None = None
    actual_hash: str | None = None
    normalization: str = "lvd1689m"
    norm_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    norm_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    params: int = 0
    dtypes: list[str] = field(default_factory=list)
    untie_local_cls_norm: bool = False
    registry_entry: str | None = None


# --------------------------------------------------------------------------- hashing
def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def check_hash(path: str | Path) -> tuple[str, str | None, str | None]:
    """``(status, expected, actual)``; status ``ok``/``mismatch``/``no hash in name``."""
    m = OFFICIAL_NAME_RE.match(Path(path).name)
    if not m:
        return "no hash in name", None, None
    actual = sha256_file(path)
    expected = m.group(2)
    return ("ok" if actual.startswith(expected) else "mismatch"), expected, actual[:8]


# --------------------------------------------------------------------------- reading
def _torch_load(path: Path) -> object:
    size = path.stat().st_size
    try:
        # mmap: a 26 GB 7B file is paged in lazily instead of being copied into RAM first
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "weights_only" in msg:
            g = re.search(
                r"Unsupported global: GLOBAL (\S+)|Unsupported operand \d+|Trying to load [^\n]*?GLOBAL \S+|Trying to [^\n]+",
                msg,
            )
            detail = g.group(0) if g else "non-tensor payload"
            raise UnsafeCheckpointError(
                f"{path}: refused to load: the file contains pickled Python objects, not only tensors "
                f"({detail}); only weights_only=True loading is allowed. Re-save it as a plain "
                "state_dict of tensors (or use safetensors)."
            ) from None
        raise TruncatedCheckpointError(f"{path} ({size} bytes): corrupt pickle data: {msg}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise TruncatedCheckpointError(
            f"{path} ({size} bytes) could not be read: it is truncated or corrupt (an interrupted "
            f"download?). Detail: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def _safetensors_load(path: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise TruncatedCheckpointError(
            f"{path} ({path.stat().st_size} bytes) is not a readable safetensors file (truncated or "
            f"corrupt?). Detail: {e}"
        ) from None


def _read_hf_dir(d: Path) -> tuple[StateDict, str, dict]:
    cfg = {}
    if (d / "config.json").is_file():
        cfg = json.loads((d / "config.json").read_text())
    for name in _HF_WEIGHT_FILES:
        p = d / name
        if not p.is_file():
            continue
        if name.endswith(".index.json"):
            index = json.loads(p.read_text())
            sd: StateDict = {}
            for shard in sorted(set(index["weight_map"].values())):
                sp = d / shard
                part = (
                    _safetensors_load(sp)
                    if shard.endswith(".safetensors")
                    else _as_state_dict(_torch_load(sp), sp)
                )
                sd.update(part)
            return sd, "hf-dir", cfg
        if name.endswith(".safetensors"):
            return _safetensors_load(p), "hf-dir", cfg
        return _as_state_dict(_torch_load(p), p), "hf-dir", cfg
    raise FileNotFoundError(f"{d}: directory holds none of {', '.join(_HF_WEIGHT_FILES)}")


_WRAPPERS = ("teacher", "model_ema", "model", "state_dict", "module", "student")


def _as_state_dict(obj: object, path: Path) -> StateDict:
    """Unwrap ``{'teacher': {...}}``-style containers and ``backbone.``/``module.`` prefixes."""
    depth = 0
    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()) and depth < 4:
        for w in _WRAPPERS:
            if w in obj and isinstance(obj[w], dict):
                obj = obj[w]
                break
        else:
            break
        depth += 1
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: no state_dict found (top-level object is {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: no tensors found (keys: {list(obj)[:8]})")
    for prefix in ("module.", "_orig_mod.", "backbone.", "model.backbone.", "encoder."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):  # training checkpoint with heads: keep the backbone
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def _metadata(obj: object) -> dict:
    if isinstance(obj, dict):
        return {k: obj[k] for k in ("arch", "norm_mean", "norm_std", "normalization") if k in obj}
    return {}


def read_checkpoint(path: str | Path) -> tuple[StateDict, CheckpointInfo, dict]:
    """Read any supported file/dir into a raw state_dict (no key conversion); returns metadata too."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    info = CheckpointInfo(path=p)
    meta: dict = {}
    if p.is_dir():
        sd, info.container, cfg = _read_hf_dir(p)
        meta["hf_config"] = cfg
    elif p.suffix == ".safetensors":
        sd, info.container = _safetensors_load(p), "safetensors"
        cfg_path = p.parent / "config.json"
        if cfg_path.is_file():
            meta["hf_config"] = json.loads(cfg_path.read_text())
    else:
        obj = _torch_load(p)
        meta.update(_metadata(obj))
        sd, info.container = _as_state_dict(obj, p), ("bin" if p.suffix == ".bin" else "pth")
    info.dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values()})
    return sd, info, meta


# --------------------------------------------------------------------------- arch inference
_NAME_PATTERNS = [
    (re.compile(r"dinov3[_-](vit7b16|vith16plus|vitl16plus|vitl16|vitb16|vits16plus|vits16|vitt16)"), None),
    (re.compile(r"dinov3[_-]convnext[_-](tiny|small|base|large)"), "convnext_"),
    (re.compile(r"vit_(small_plus|small|base|large|huge_plus|7b|tiny)_patch16_dinov3"), "timm"),
]
_TIMM_NAMES = {
    "tiny": "vitt16",
    "small": "vits16",
    "small_plus": "vits16plus",
    "base": "vitb16",
    "large": "vitl16",
    "huge_plus": "vith16plus",
    "7b": "vit7b16",
}


def arch_from_name(name: str) -> str | None:
    """Arch from an official / HF / timm file or directory name, else None."""
    low = name.lower()
    for pat, kind in _NAME_PATTERNS:
        m = pat.search(low)
        if m:
            if kind == "convnext_":
                return "convnext_" + m.group(1)
            if kind == "timm":
                return _TIMM_NAMES[m.group(1)]
            return m.group(1)
    return None


def describe_state_dict(sd: StateDict) -> dict:
    """Shape facts of an official-layout state_dict (embed dim, blocks, ffn, hidden, qkv bias...)."""
    if "downsample_layers.0.0.weight" in sd:
        dims = []
        i = 0
        while f"downsample_layers.{i}.0.weight" in sd or f"downsample_layers.{i}.1.weight" in sd:
            w = sd.get(f"downsample_layers.{i}.1.weight") if i else sd[f"downsample_layers.{i}.0.weight"]
            dims.append(int(w.shape[0]))
            i += 1
        depths = []
        for s in range(len(dims)):
            idx = {int(m.group(1)) for k in sd if (m := re.match(rf"stages\.{s}\.(\d+)\.", k))}
            depths.append(max(idx) + 1 if idx else 0)
        return {"kind": "convnext", "dims": tuple(dims), "depths": tuple(depths)}
    if "cls_token" not in sd:
        return {"kind": "unknown"}
    D = int(sd["cls_token"].shape[-1])
    idx = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    swiglu = "blocks.0.mlp.w1.weight" in sd
    hw = sd.get("blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight")
    return {
        "kind": "vit",
        "embed_dim": D,
        "depth": max(idx) + 1 if idx else 0,
        "ffn": "swiglu" if swiglu else "mlp",
        "ffn_hidden": int(hw.shape[0]) if hw is not None else 0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "n_storage_tokens": int(sd["storage_tokens"].shape[1]) if "storage_tokens" in sd else 0,
        "local_cls_norm": "local_cls_norm.weight" in sd,
    }


def arch_from_shapes(sd: StateDict) -> str | None:
    """The ARCHS entry whose shapes match an official-layout state_dict, else None."""
    d = describe_state_dict(sd)
    for spec in ARCHS.values():
        if d["kind"] == "convnext" and spec.kind == "convnext":
            if d["dims"] == spec.convnext_dims and d["depths"] == spec.convnext_depths:
                return spec.name
        elif d["kind"] == "vit" and spec.kind == "vit":
            if (
                d["embed_dim"] == spec.embed_dim
                and d["depth"] == spec.depth
                and d["ffn"] == ("mlp" if spec.ffn == "mlp" else "swiglu")
                and d["ffn_hidden"] == spec.ffn_hidden
            ):
                return spec.name
    return None


def _summary(d: dict) -> str:
    if d.get("kind") == "convnext":
        return f"ConvNeXt dims {list(d['dims'])}, depths {list(d['depths'])}"
    if d.get("kind") == "vit":
        return (
            f"ViT embed dim {d['embed_dim']}, {d['depth']} blocks, {d['ffn']} hidden {d['ffn_hidden']}, "
            f"qkv bias {d['qkv_bias']}"
        )
    return "no recognisable backbone"


# --------------------------------------------------------------------------- validation
def compare_state_dicts(model: nn.Module, sd: StateDict) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, shape_mismatch)`` of ``sd`` against ``model.state_dict()`` (meta ok)."""
    ref = model.state_dict()
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(ref[k].shape)}"
        for k in ref
        if k in sd and tuple(sd[k].shape) != tuple(ref[k].shape)
    ]
    return missing, unexpected, shapes


def _mismatch_message(path, arch: str, missing, unexpected, shapes, sd: StateDict) -> str:
    d = describe_state_dict(sd)
    guess = arch_from_shapes(sd)
    lines = [f"{path}: state_dict does not match the expected arch {arch!r}:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s), first: {missing[:5]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s), first: {unexpected[:5]}")
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatch(es), first: {shapes[:3]}")
    lines.append(f"  checkpoint holds: {_summary(d)}")
    if guess and guess != arch:
        cause = f"the file is a {guess!r} checkpoint; pass arch={guess!r} (or arch=None to infer it)"
    elif missing and not unexpected and not shapes:
        cause = "the checkpoint is incomplete (truncated save, or a partial/sharded file)"
    elif d.get("kind") == "unknown":
        cause = "this is not a DINOv3 backbone state_dict (a head or another model?)"
    else:
        cause = "a different or modified architecture (depth/width overrides?)"
    lines.append(f"  likely cause: {cause}")
    return "\n".join(lines)


def _resolve_path(path: str | Path) -> tuple[Path, str | None]:
    """A path, or a registry entry name with shipped weights (e.g. ``"default"``)."""
    p = Path(path)
    if p.exists():
        return p, None
    if isinstance(path, str) and "/" not in path and not p.suffix:
        reg = load_registry()
        if path in reg:
            return reg[path].weights_path(), path
    raise FileNotFoundError(f"checkpoint not found: {p}")


def inspect_checkpoint(
    path: str | Path, arch: str | None = None, *, verify_hash: bool = True
) -> tuple[StateDict, CheckpointInfo]:
    """Read, convert to the official layout, infer arch/normalisation and check the hash."""
    p, reg_name = _resolve_path(path)
    info_entry = get_entry(reg_name) if reg_name else entry_for_file(p)
    raw, info, meta = read_checkpoint(p)
    info.path = p
    fmt = detect_format(raw)
    hf_cfg = meta.get("hf_config") or {}
    heads = hf_cfg.get("num_attention_heads")
    sd, info.format = to_official(raw, num_heads=heads)
    if fmt != info.format:  # pragma: no cover - to_official returns detect_format's value
        info.format = fmt
    if verify_hash:
        info.hash_status, info.expected_hash, info.actual_hash = check_hash(p)
    # arch: argument > stored metadata > registry entry > file name > shapes
    if arch is not None:
        info.arch, info.arch_source = resolve_arch(arch).name, "argument"
    elif "arch" in meta and isinstance(meta["arch"], str):
        info.arch, info.arch_source = resolve_arch(meta["arch"]).name, "metadata"
    elif info_entry is not None:
        info.arch, info.arch_source = info_entry.arch, "registry"
    elif (a := arch_from_name(p.name) or arch_from_name(str(p))) is not None:
        info.arch, info.arch_source = a, "file name"
    elif (a := arch_from_shapes(sd)) is not None:
        info.arch, info.arch_source = a, "shapes"
    info.untie_local_cls_norm = "local_cls_norm.weight" in sd
    sat = "sat493m" in str(p).lower() or (info_entry is not None and info_entry.normalization == "sat493m")
    if info_entry is not None:
        info.registry_entry = info_entry.name
        info.normalization, info.norm_mean, info.norm_std = (
            info_entry.normalization,
            info_entry.norm_mean,
            info_entry.norm_std,
        )
    elif sat:
        info.normalization, info.norm_mean, info.norm_std = "sat493m", SAT_MEAN, SAT_STD
    if "norm_mean" in meta and "norm_std" in meta:
        info.normalization = str(meta.get("normalization", "custom"))
        info.norm_mean = tuple(float(v) for v in meta["norm_mean"])
        info.norm_std = tuple(float(v) for v in meta["norm_std"])
    seen: set[int] = set()
    n = 0
    for k, v in sd.items():
        if k.endswith((".periods", ".bias_mask")) or k.startswith("norms."):
            continue
        if id(v) in seen:
            continue
        seen.add(id(v))
        n += v.numel()
    info.params = n
    return sd, info


def _fix_nan_bias_mask(sd: StateDict) -> None:
    for k, v in sd.items():
        if k.endswith("qkv.bias_mask") and torch.isnan(v).any():
            d = v.shape[0] // 3
            m = torch.ones_like(v)
            m[d : 2 * d] = 0
            sd[k] = m


def load_backbone(
    path: str | Path,
    arch: str | None = None,
    *,
    map_location: str | torch.device = "cpu",
    verify_hash: bool = True,
    dtype: torch.dtype | None = None,
    **overrides,
) -> nn.Module:
    """Build the backbone for ``arch`` (inferred when None) and load ``path`` into it, strictly.

    ``path``: an official ``.pth``, a timm state_dict (``.pth``/``.safetensors``), a Hugging Face
    ``model.safetensors`` / ``pytorch_model.bin`` or its directory, or a registry entry name with
    shipped weights (``"default"``). Raises :class:`CheckpointError` subclasses with a clear message.
    """
    sd, info = inspect_checkpoint(path, arch, verify_hash=verify_hash)
    if info.hash_status == "mismatch":
        raise HashMismatchError(
            f"{info.path}: sha256 starts with {info.actual_hash}, but the official file name says "
            f"{info.expected_hash}: the file is corrupt, truncated or was modified/renamed. Re-download it, "
            "or pass verify_hash=False to load it anyway."
        )
    if info.arch is None:
        raise ArchMismatchError(
            f"{info.path}: cannot infer the architecture ({_summary(describe_state_dict(sd))}); "
            f"pass arch= one of {', '.join(ARCHS)}"
        )
    spec: ArchSpec = ARCHS[info.arch]
    kw = dict(overrides)
    if spec.kind == "vit" and info.untie_local_cls_norm and not spec.untie_global_and_local_cls_norm:
        kw.setdefault("untie_global_and_local_cls_norm", True)
    kw.setdefault("norm_mean", info.norm_mean)
    kw.setdefault("norm_std", info.norm_std)
    model = build_backbone(spec.name, device="meta", **kw)
    missing, unexpected, shapes = compare_state_dicts(model, sd)
    if missing or unexpected or shapes:
        raise ArchMismatchError(_mismatch_message(info.path, spec.name, missing, unexpected, shapes, sd))
    _fix_nan_bias_mask(sd)
    ref = model.state_dict()
    sd = {k: v.to(dtype=ref[k].dtype if dtype is None else dtype) for k, v in sd.items()}
    if "rope_embed.periods" in sd:
        sd["rope_embed.periods"] = sd["rope_embed.periods"].to(torch.float32)
    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(map_location)
    model.eval()
    model.checkpoint_info = info  # type: ignore[attr-defined]
    return model

"""Architecture specs of every buildable backbone and ``build_backbone``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from .convnext import ConvNeXtBackbone
from .layers import swiglu_hidden
from .vit import LVD_MEAN, LVD_STD, DinoVisionTransformer

SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)


@dataclass(frozen=True)
class ArchSpec:
    """Static description of one architecture (``params`` = exact parameter count, buffers excluded)."""

    name: str
    kind: str  # "vit" | "convnext"
    embed_dim: int
    depth: int  # ViT blocks; ConvNeXt: number of stages (4)
    params: int
    patch_size: int = 16
    num_heads: int = 0
    ffn: str = "mlp"  # "mlp" | "swiglu" | "swiglu64" | "convnext"
    ffn_ratio: float = 4.0
    ffn_hidden: int = 0
    qkv_bias: bool = True
    n_storage_tokens: int = 4
    untie_global_and_local_cls_norm: bool = False
    convnext_depths: tuple[int, ...] = ()
    convnext_dims: tuple[int, ...] = ()
    norm_mean: tuple[float, float, float] = LVD_MEAN
    norm_std: tuple[float, float, float] = LVD_STD
    official: bool = True  # released by Meta (False: our own small variants)
    notes: str = field(default="", compare=False)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads if self.num_heads else 0

    def build_kwargs(self) -> dict:
        """Constructor kwargs of the backbone class for this spec."""
        if self.kind == "convnext":
            return dict(
                arch=self.name,
                depths=self.convnext_depths,
                dims=self.convnext_dims,
                norm_mean=self.norm_mean,
                norm_std=self.norm_std,
            )
        return dict(
            arch=self.name,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            ffn=self.ffn,
            ffn_hidden=self.ffn_hidden,
            qkv_bias=self.qkv_bias,
            n_storage_tokens=self.n_storage_tokens,
            untie_global_and_local_cls_norm=self.untie_global_and_local_cls_norm,
            norm_mean=self.norm_mean,
            norm_std=self.norm_std,
        )


def _vit(
    name, dim, depth, heads, ffn, ratio, params, *, qkv_bias=True, official=True, notes="", **kw
) -> ArchSpec:
    if ffn == "mlp":
        hidden = int(dim * ratio)
    else:
        hidden = swiglu_hidden(dim, ratio, 64 if ffn == "swiglu64" else 8)
    return ArchSpec(
        name=name,
        kind="vit",
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        ffn=ffn,
        ffn_ratio=ratio,
        ffn_hidden=hidden,
        qkv_bias=qkv_bias,
        params=params,
        official=official,
        notes=notes,
        **kw,
    )


def _cnx(name, depths, dims, params) -> ArchSpec:
    return ArchSpec(
        name=name,
        kind="convnext",
        embed_dim=dims[-1],
        depth=len(depths),
        params=params,
        patch_size=32,
        ffn="convnext",
        n_storage_tokens=0,
        convnext_depths=tuple(depths),
        convnext_dims=tuple(dims),
    )


#: Every buildable architecture. ``params`` are exact counts of the built model (tests check them).
ARCHS: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        _vit("vitt16", 192, 12, 3, "mlp", 4, 5_492_160, official=False, notes="ViT-Ti/16, ours (CPU/Jetson)"),
        _vit("vits16", 384, 12, 6, "mlp", 4, 21_601_152),
        _vit("vits16plus", 384, 12, 6, "swiglu", 6, 28_697_472),
        _vit("vitb16", 768, 12, 12, "mlp", 4, 85_669_632),
        _vit("vitl16", 1024, 24, 16, "mlp", 4, 303_154_176),
        _vit("vitl16plus", 1024, 24, 16, "swiglu", 6, 403_915_776),
        _vit("vith16plus", 1280, 32, 20, "swiglu", 6, 840_633_600),
        _vit(
            "vit7b16",
            4096,
            40,
            32,
            "swiglu64",
            3,
            6_716_043_264,
            qkv_bias=False,
            untie_global_and_local_cls_norm=True,
        ),
        _cnx("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 27_820_128),
        _cnx("convnext_small", (3, 3, 27, 3), (96, 192, 384, 768), 49_454_688),
        _cnx("convnext_base", (3, 3, 27, 3), (128, 256, 512, 1024), 87_566_464),
        _cnx("convnext_large", (3, 3, 27, 3), (192, 384, 768, 1536), 196_230_336),
    )
}

_ALIASES = {"vitsplus": "vits16plus", "vithplus": "vith16plus", "vitlplus": "vitl16plus"}


def resolve_arch(arch: str) -> ArchSpec:
    """Spec for an arch name (``dinov3_`` prefix and case are ignored); ValueError lists valid names."""
    key = arch.strip().lower()
    key = key.removeprefix("dinov3_").removeprefix("dinov3-").replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[key]


def _accepted(cls) -> set[str]:
    return {p for p in inspect.signature(cls.__init__).parameters if p != "self"}


def build_backbone(
    arch: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides,
) -> nn.Module:
    """Build a randomly initialised backbone for ``arch`` (see ``ARCHS``).

    ``overrides`` go to the constructor, e.g. ``depth=2``, ``drop_path_rate=0.1``,
    ``rope_rescale=2.0`` (ViT RoPE box augmentation, training mode only), ``norm_mean``,
    ``untie_global_and_local_cls_norm=True`` (SAT ViT-L), ``patch_size=16`` (ConvNeXt: resample the
    patch maps to the /16 grid). ``device="meta"`` builds without allocating memory.
    """
    spec = resolve_arch(arch)
    cls = ConvNeXtBackbone if spec.kind == "convnext" else DinoVisionTransformer
    kwargs = spec.build_kwargs()
    unknown = sorted(set(overrides) - _accepted(cls))
    if unknown:
        raise TypeError(
            f"build_backbone({spec.name!r}): unknown override(s) {unknown}; accepted: {sorted(_accepted(cls))}"
        )
    kwargs.update(overrides)
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "meta":
        with torch.device("meta"):
            model = cls(**kwargs)
    else:
        model = cls(**kwargs)
        if dev is not None:
            model = model.to(dev)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded; ``norm``/``norms.3`` counted once)."""
    return sum(p.numel() for p in model.parameters())

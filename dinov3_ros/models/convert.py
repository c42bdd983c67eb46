"""State-dict key conversion between the official DINOv3 layout, timm (``Eva`` dinov3 models) and
Hugging Face transformers (``DINOv3ViTModel`` / ``DINOv3ConvNextModel``).

Layouts (ViT, block ``i``):

============================  ===============================  =====================================
official                      timm                             Hugging Face
============================  ===============================  =====================================
cls_token (1,1,D)             cls_token                        embeddings.cls_token
storage_tokens (1,R,D)        reg_token                        embeddings.register_tokens
mask_token (1,D)              (absent)                         embeddings.mask_token (1,1,D)
patch_embed.proj.*            patch_embed.proj.*               embeddings.patch_embeddings.*
rope_embed.periods            (not persistent)                 (not persistent: inv_freq)
blocks.i.norm1/norm2          blocks.i.norm1/norm2             layer.i.norm1/norm2
blocks.i.attn.qkv.weight      blocks.i.attn.qkv.weight         layer.i.attention.{q,k,v}_proj.weight
blocks.i.attn.qkv.bias        blocks.i.attn.{q,v}_bias         layer.i.attention.{q,v}_proj.bias
blocks.i.attn.qkv.bias_mask   (k_bias buffer, zero)            (k_proj has no bias)
blocks.i.attn.proj.*          blocks.i.attn.proj.*             layer.i.attention.o_proj.*
blocks.i.ls1/ls2.gamma        blocks.i.gamma_1/gamma_2         layer.i.layer_scale1/2.lambda1
blocks.i.mlp.fc1/fc2          blocks.i.mlp.fc1/fc2             layer.i.mlp.up_proj/down_proj
blocks.i.mlp.w1/w2/w3         blocks.i.mlp.fc1_g/fc1_x/fc2     layer.i.mlp.gate_proj/up_proj/down_proj
norm.*                        norm.*                           norm.*
local_cls_norm.* (7B, SAT-L)  (dropped)                        (dropped)
============================  ===============================  =====================================

HF files on the Hub use ``layer.i``; transformers >= 5 holds them as ``model.layer.i`` in memory. Both
are accepted; ``official_to_hf(layer_prefix=...)`` picks the output form. The k third of the fused qkv
bias is masked to zero in every layout, so conversions drop it and restore zeros.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from .layers import rope_periods

StateDict = dict[str, Tensor]

#: head count by embed dim for the known ViT widths (periods need the head dim)
_HEADS_BY_DIM = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 20, 4096: 32}


def head_dim_for(embed_dim: int, num_heads: int | None = None) -> int:
    """Head dim of a ViT; ``num_heads`` defaults to the released width -> heads map (else head dim 64)."""
    if num_heads:
        return embed_dim // num_heads
    heads = _HEADS_BY_DIM.get(embed_dim)
    return embed_dim // heads if heads else 64


# --------------------------------------------------------------------------- format detection
def detect_format(sd: StateDict) -> str:
    """One of ``official``, ``timm``, ``hf`` (ViT) or ``official_convnext``, ``hf_convnext``."""
    keys = set(sd)
    if "storage_tokens" in keys or ("blocks.0.attn.qkv.weight" in keys and "blocks.0.ls1.gamma" in keys):
        return "official"
    if "reg_token" in keys or "blocks.0.gamma_1" in keys:
        return "timm"
    if "embeddings.patch_embeddings.weight" in keys:
        return "hf"
    if "downsample_layers.0.0.weight" in keys:
        return "official_convnext"
    if any(k.startswith(("stages.0.downsample_layers.", "model.stages.0.downsample_layers.")) for k in keys):
        return "hf_convnext"
    first = sorted(keys)[:5]
    raise ValueError(f"unrecognised state_dict layout (first keys: {first}); expected a DINOv3 backbone")


def _n_blocks(sd: StateDict, pattern: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


# --------------------------------------------------------------------------- official <-> timm
def official_to_timm(sd: StateDict, *, qkv_bias: bool | None = None) -> StateDict:
    """Official -> timm keys. ``qkv_bias=False`` drops the (all-zero in releases) q/v biases, matching
    timm's non-``_qkvb`` models; ``None`` keeps them when present (timm ``*_qkvb`` models)."""
    out: StateDict = {}
    for k, v in sd.items():
        if k.endswith((".periods", ".bias_mask")) or k == "mask_token" or k.startswith("local_cls_norm."):
            continue
        if k.endswith("attn.qkv.bias"):
            if qkv_bias is False:
                continue
            q, _k, vv = v.chunk(3, dim=0)
            out[k.replace("qkv.bias", "q_bias")] = q
            out[k.replace("qkv.bias", "v_bias")] = vv
            continue
        nk = (
            k.replace("storage_tokens", "reg_token")
            .replace(".ls1.gamma", ".gamma_1")
            .replace(".ls2.gamma", ".gamma_2")
        )
        nk = (
            nk.replace(".mlp.w1.", ".mlp.fc1_g.")
            .replace(".mlp.w2.", ".mlp.fc1_x.")
            .replace(".mlp.w3.", ".mlp.fc2.")
        )
        out[nk] = v
    return out


def timm_to_official(
    sd: StateDict, *, num_heads: int | None = None, qkv_bias: bool = True, rope_base: float = 100.0
) -> StateDict:
    """timm -> official keys; adds ``mask_token`` (zeros), ``rope_embed.periods`` (bf16-rounded) and,
    when ``qkv_bias``, a zero qkv bias (if timm had none) plus ``bias_mask``."""
    out: StateDict = {}
    pending: dict[str, dict[str, Tensor]] = {}
    for k, v in sd.items():
        if k in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias") or "rope" in k:
            continue
        if k.endswith(("attn.q_bias", "attn.v_bias", "attn.k_bias")):
            pre = k.rsplit(".", 1)[0]
            pending.setdefault(pre, {})[k.rsplit(".", 1)[1]] = v
            continue
        nk = (
            k.replace("reg_token", "storage_tokens")
            .replace(".gamma_1", ".ls1.gamma")
            .replace(".gamma_2", ".ls2.gamma")
        )
        nk = nk.replace(".mlp.fc1_g.", ".mlp.w1.").replace(".mlp.fc1_x.", ".mlp.w2.")
        out[nk] = v
    # SwiGLU: timm fc2 is w3 when the block has fc1_g
    for k in list(out):
        if ".mlp.fc2." in k and k.replace(".mlp.fc2.", ".mlp.w1.") in out:
            out[k.replace(".mlp.fc2.", ".mlp.w3.")] = out.pop(k)
    D = out["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, D, dtype=out["cls_token"].dtype)
    out["rope_embed.periods"] = rope_periods(head_dim_for(D, num_heads), rope_base)
    n = _n_blocks(out, r"blocks\.(\d+)\.")
    for i in range(n):
        pre = f"blocks.{i}.attn"
        w = out[f"{pre}.qkv.weight"]
        b = pending.get(pre)
        if b is None and not qkv_bias:
            continue
        if b is None:
            b = {"q_bias": w.new_zeros(D), "v_bias": w.new_zeros(D)}
        out[f"{pre}.qkv.bias"] = torch.cat((b["q_bias"], torch.zeros_like(b["q_bias"]), b["v_bias"]))
        out[f"{pre}.qkv.bias_mask"] = _bias_mask(D, w.dtype)
    return out


def _bias_mask(dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    m = torch.ones(3 * dim, dtype=dtype)
    m[dim : 2 * dim] = 0
    return m


# --------------------------------------------------------------------------- official <-> HF (ViT)
_HF_COMMON = {
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "attn.proj.": "attention.o_proj.",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
}
_HF_MLP = {"mlp.fc1.": "mlp.up_proj.", "mlp.fc2.": "mlp.down_proj."}
_HF_SWIGLU = {"mlp.w1.": "mlp.gate_proj.", "mlp.w2.": "mlp.up_proj.", "mlp.w3.": "mlp.down_proj."}


def _hf_block_map(swiglu: bool) -> dict[str, str]:
    return {**_HF_COMMON, **(_HF_SWIGLU if swiglu else _HF_MLP)}


def _rename_prefix(rest: str, mapping: dict[str, str]) -> str | None:
    for a, b in mapping.items():
        if rest.startswith(a):
            return b + rest[len(a) :]
    return None


def official_to_hf(sd: StateDict, *, layer_prefix: str = "layer.") -> StateDict:
    """Official -> Hugging Face ``DINOv3ViTModel`` keys (``layer_prefix="model.layer."`` for the
    in-memory layout of transformers >= 5)."""
    out: StateDict = {}
    swiglu = any(".mlp.w1." in k for k in sd)
    for k, v in sd.items():
        if k == "cls_token":
            out["embeddings.cls_token"] = v
        elif k == "storage_tokens":
            out["embeddings.register_tokens"] = v
        elif k == "mask_token":
            out["embeddings.mask_token"] = v.reshape(1, 1, -1)
        elif k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings." + k.split(".")[-1]] = v
        elif k.startswith("norm."):
            out[k] = v
        elif k.startswith(("rope_embed.", "local_cls_norm.", "cls_norm.")) or k.endswith(".bias_mask"):
            continue
        elif m := re.match(r"blocks\.(\d+)\.(.*)", k):
            i, rest = m.group(1), m.group(2)
            pre = f"{layer_prefix}{i}."
            if rest == "attn.qkv.weight":
                q, kk, vv = v.chunk(3, dim=0)
                out[pre + "attention.q_proj.weight"] = q
                out[pre + "attention.k_proj.weight"] = kk
                out[pre + "attention.v_proj.weight"] = vv
            elif rest == "attn.qkv.bias":
                q, _k, vv = v.chunk(3, dim=0)
                out[pre + "attention.q_proj.bias"] = q
                out[pre + "attention.v_proj.bias"] = vv
            else:
                new = _rename_prefix(rest, _hf_block_map(swiglu))
                if new is None:
                    raise KeyError(f"official_to_hf: unhandled key {k!r}")
                out[pre + new] = v
        else:
            raise KeyError(f"official_to_hf: unhandled key {k!r}")
    return out


def hf_to_official(sd: StateDict, *, num_heads: int | None = None, rope_base: float = 100.0) -> StateDict:
    """Hugging Face ``DINOv3ViTModel`` keys (``layer.i`` or ``model.layer.i``) -> official."""
    out: StateDict = {}
    swiglu = any(".mlp.gate_proj." in k for k in sd)
    attn: dict[str, dict[str, Tensor]] = {}
    for k, v in sd.items():
        k2 = k.removeprefix("dinov3.")
        if k2.startswith("model.layer."):
            k2 = k2[len("model.") :]
        if k2 == "embeddings.cls_token":
            out["cls_token"] = v
        elif k2 == "embeddings.register_tokens":
            out["storage_tokens"] = v
        elif k2 == "embeddings.mask_token":
            out["mask_token"] = v.reshape(1, -1)
        elif k2.startswith("embeddings.patch_embeddings."):
            out["patch_embed.proj." + k2.split(".")[-1]] = v
        elif k2.startswith("norm."):
            out[k2] = v
        elif k2.startswith("rope_embeddings."):
            continue
        elif m := re.match(r"layer\.(\d+)\.(.*)", k2):
            i, rest = m.group(1), m.group(2)
            if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                attn.setdefault(i, {})[rest[len("attention.") :]] = v
                continue
            new = _rename_prefix(rest, {b: a for a, b in _hf_block_map(swiglu).items()})
            if new is None:
                raise KeyError(f"hf_to_official: unhandled key {k!r}")
            out[f"blocks.{i}.{new}"] = v
        else:
            raise KeyError(f"hf_to_official: unhandled key {k!r}")
    for i, parts in attn.items():
        pre = f"blocks.{i}.attn.qkv."
        q = parts["q_proj.weight"]
        out[pre + "weight"] = torch.cat((q, parts["k_proj.weight"], parts["v_proj.weight"]), dim=0)
        if "q_proj.bias" in parts:
            qb = parts["q_proj.bias"]
            kb = parts.get("k_proj.bias", torch.zeros_like(qb))
            out[pre + "bias"] = torch.cat((qb, torch.zeros_like(kb), parts["v_proj.bias"]))
            out[pre + "bias_mask"] = _bias_mask(qb.shape[0], qb.dtype)
    if "cls_token" not in out:
        raise KeyError("hf_to_official: no embeddings.cls_token in the state_dict")
    D = out["cls_token"].shape[-1]
    if "mask_token" not in out:
        out["mask_token"] = torch.zeros(1, D, dtype=out["cls_token"].dtype)
    out["rope_embed.periods"] = rope_periods(head_dim_for(D, num_heads), rope_base)
    return out


def timm_to_hf(sd: StateDict, **kw) -> StateDict:
    """timm -> Hugging Face (through the official layout)."""
    layer_prefix = kw.pop("layer_prefix", "layer.")
    return official_to_hf(timm_to_official(sd, **kw), layer_prefix=layer_prefix)


def hf_to_timm(sd: StateDict, *, qkv_bias: bool | None = None, num_heads: int | None = None) -> StateDict:
    """Hugging Face -> timm (through the official layout)."""
    return official_to_timm(hf_to_official(sd, num_heads=num_heads), qkv_bias=qkv_bias)


# --------------------------------------------------------------------------- ConvNeXt official <-> HF
_HF_CNX_BLOCK = [
    ("dwconv.", "depthwise_conv."),
    ("norm.", "layer_norm."),
    ("pwconv1.", "pointwise_conv1."),
    ("pwconv2.", "pointwise_conv2."),
    ("gamma", "gamma"),
]


def convnext_official_to_hf(sd: StateDict, *, stage_prefix: str = "stages.") -> StateDict:
    """Official ConvNeXt -> Hugging Face ``DINOv3ConvNextModel`` (``model.stages.`` in transformers 5)."""
    out: StateDict = {}
    for k, v in sd.items():
        if m := re.match(r"downsample_layers\.(\d+)\.(\d+)\.(.*)", k):
            out[f"{stage_prefix}{m.group(1)}.downsample_layers.{m.group(2)}.{m.group(3)}"] = v
        elif m := re.match(r"stages\.(\d+)\.(\d+)\.(.*)", k):
            rest = m.group(3)
            for a, b in _HF_CNX_BLOCK:
                if rest.startswith(a):
                    out[f"{stage_prefix}{m.group(1)}.layers.{m.group(2)}.{b}{rest[len(a) :]}"] = v
                    break
            else:
                raise KeyError(f"convnext_official_to_hf: unhandled key {k!r}")
        elif k.startswith("norm."):
            out["layer_norm." + k[len("norm.") :]] = v
        elif k.startswith("norms."):
            continue
        else:
            raise KeyError(f"convnext_official_to_hf: unhandled key {k!r}")
    return out


def convnext_hf_to_official(sd: StateDict) -> StateDict:
    """Hugging Face ``DINOv3ConvNextModel`` -> official ConvNeXt keys (adds ``norms.3.*``)."""
    out: StateDict = {}
    for k, v in sd.items():
        k2 = k.removeprefix("model.")
        if m := re.match(r"stages\.(\d+)\.downsample_layers\.(\d+)\.(.*)", k2):
            out[f"downsample_layers.{m.group(1)}.{m.group(2)}.{m.group(3)}"] = v
        elif m := re.match(r"stages\.(\d+)\.layers\.(\d+)\.(.*)", k2):
            rest = m.group(3)
            for a, b in _HF_CNX_BLOCK:
                if rest.startswith(b):
                    out[f"stages.{m.group(1)}.{m.group(2)}.{a}{rest[len(b) :]}"] = v
                    break
            else:
                raise KeyError(f"convnext_hf_to_official: unhandled key {k!r}")
        elif k2.startswith("layer_norm."):
            out["norm." + k2[len("layer_norm.") :]] = v
            out["norms.3." + k2[len("layer_norm.") :]] = v
        else:
            raise KeyError(f"convnext_hf_to_official: unhandled key {k!r}")
    return out


def to_official(sd: StateDict, *, num_heads: int | None = None) -> tuple[StateDict, str]:
    """Convert any supported layout to the official one; returns ``(state_dict, source_format)``."""
    fmt = detect_format(sd)
    if fmt in ("official", "official_convnext"):
        return dict(sd), fmt
    if fmt == "timm":
        return timm_to_official(sd, num_heads=num_heads), fmt
    if fmt == "hf":
        return hf_to_official(sd, num_heads=num_heads), fmt
    return convnext_hf_to_official(sd), fmt

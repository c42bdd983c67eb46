"""Inference-only DINOv3 ViT forward, built from a backbone's weights (DINOv3 state_dict key layout).

Why a separate forward: deployment needs things the training-grade backbone does not promise —
RoPE sin/cos computed once per grid in fp32 and reused by every block (baked as constants for a fixed
export, so the ONNX graph has no Range/Tile/If), CLS/register rows folded into the RoPE tables as the
identity rotation (no slicing/concat per block), masked-k qkv bias and LayerScale folded into the
linear weights, fused QKV + ``scaled_dot_product_attention``, no ``masks`` input and no training-time
RoPE jitter. The math is the reference DINOv3 math; ``tests/test_runtime_export.py`` checks it against
``dinov3_ros.models`` token by token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InferenceViT", "ViTConfig", "is_dinov3_vit_state_dict"]


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a DINOv3 ViT, read from its state_dict."""

    embed_dim: int
    depth: int
    num_heads: int
    hidden: int
    ffn: str  # "mlp" | "swiglu"
    n_storage_tokens: int
    patch_size: int
    qkv_bias: bool
    ln_eps: float = 1e-5
    rope_base: float = 100.0


def is_dinov3_vit_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    """True when ``sd`` has the DINOv3 ViT key layout this forward covers (no untied ``cls_norm``)."""
    return (
        "patch_embed.proj.weight" in sd
        and "blocks.0.attn.qkv.weight" in sd
        and "cls_token" in sd
        and "cls_norm.weight" not in sd
    )


def _config_from_state_dict(sd: dict[str, torch.Tensor], num_heads: int | None, ln_eps: float) -> ViTConfig:
    D = sd["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    swiglu = "blocks.0.mlp.w1.weight" in sd
    hidden = sd["blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    if num_heads is None:
        if "rope_embed.periods" in sd:  # periods has D_head/4 entries
            num_heads = D // (4 * sd["rope_embed.periods"].numel())
        else:
            num_heads = D // 64
    return ViTConfig(
        embed_dim=D,
        depth=depth,
        num_heads=int(num_heads),
        hidden=int(hidden),
        ffn="swiglu" if swiglu else "mlp",
        n_storage_tokens=int(sd["storage_tokens"].shape[1]) if "storage_tokens" in sd else 0,
        patch_size=int(sd["patch_embed.proj.weight"].shape[-1]),
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        ln_eps=ln_eps,
    )


def _ln(x: torch.Tensor, m: nn.LayerNorm, fp32: bool) -> torch.Tensor:
    if fp32 and x.dtype != torch.float32:
        return F.layer_norm(x.float(), m.normalized_shape, m.weight.float(), m.bias.float(), m.eps).to(
            x.dtype
        )
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


class _Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.dim = D  # python ints (not traced shapes) keep the ONNX graph free of shape arithmetic
        self.head_dim = D // cfg.num_heads
        self.ln_fp32 = False
        self.gelu_epilogue = False
        self.norm1 = nn.LayerNorm(D, eps=cfg.ln_eps)
        self.qkv = nn.Linear(D, 3 * D, bias=True)  # masked k-bias folded in (zeros without qkv bias)
        self.proj = nn.Linear(D, D)  # LayerScale ls1 folded in
        self.norm2 = nn.LayerNorm(D, eps=cfg.ln_eps)
        self.swiglu = cfg.ffn == "swiglu"
        if self.swiglu:
            self.w12 = nn.Linear(D, 2 * cfg.hidden)  # w1 | w2 fused
            self.w3 = nn.Linear(cfg.hidden, D)  # LayerScale ls2 folded in
        else:
            self.fc1 = nn.Linear(D, cfg.hidden)
            self.fc2 = nn.Linear(cfg.hidden, D)  # LayerScale ls2 folded in

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, N = x.shape[0], x.shape[1]
        D, H, Dh = self.dim, self.num_heads, self.head_dim
        qkv = self.qkv(_ln(x, self.norm1, self.ln_fp32))
        qkv = qkv.reshape(B, N, 3, H, Dh)
        qk = qkv[:, :, :2].float()  # RoPE in fp32
        half = Dh // 2
        rot = torch.cat([qk[..., half:], qk[..., :half]], dim=-1)  # sign folded into ``sin``
        qk = (qk * cos + rot * sin).to(qkv.dtype)
        q = qk[:, :, 0].transpose(1, 2)
        k = qk[:, :, 1].transpose(1, 2)
        v = qkv[:, :, 2].transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, D))
        y = _ln(x, self.norm2, self.ln_fp32)
        if self.swiglu:
            a1, a2 = self.w12(y).chunk(2, dim=-1)
            y = self.w3(F.silu(a1) * a2)
        elif self.gelu_epilogue:  # GEMM + bias + tanh-GELU in one cuBLASLt call (see set_gelu_epilogue)
            y2 = torch._addmm_activation(
                self.fc1.bias, y.reshape(B * N, D), self.fc1.weight.t(), use_gelu=True
            )
            y = self.fc2(y2).reshape(B, N, D)
        else:
            y = self.fc2(F.gelu(self.fc1(y)))
        return x + y


class InferenceViT(nn.Module):
    """DINOv3 ViT forward for inference and export.

    ``forward(x) -> (patch_tokens [B, h, w, D], cls [B, D], layers)`` where ``layers`` lists, for each
    of ``layer_indices``, the final-normed ``(patches [B, D, h, w], cls [B, D])`` as
    ``get_intermediate_layers(..., reshape=True, return_class_token=True)`` does (for dense heads).
    """

    def __init__(self, cfg: ViTConfig, periods: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.embed_dim = D
        self.patch_size = cfg.patch_size
        self.n_prefix = 1 + cfg.n_storage_tokens
        self.patch_embed = nn.Conv2d(3, D, cfg.patch_size, stride=cfg.patch_size)
        self.prefix_tokens = nn.Parameter(torch.zeros(1, self.n_prefix, D))  # [cls | storage]
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=cfg.ln_eps)
        Dh = D // cfg.num_heads
        if periods is None:
            k = torch.arange(Dh // 4, dtype=torch.float32)
            periods = cfg.rope_base ** (2 * k / (Dh // 2))
        self.register_buffer("periods", periods.detach().float().clone(), persistent=True)
        self.layer_indices: tuple[int, ...] = (cfg.depth - 1,)
        #: LayerNorms in fp32 even when the weights are fp16/bf16 (fp16 ONNX for strongly-typed TensorRT)
        self.ln_fp32 = False
        #: compute RoPE tables inside the graph (dynamic H/W export) instead of using the cache
        self.dynamic_rope = False
        #: patch embedding as patchify + one GEMM instead of a strided convolution (same math; faster
        #: on GPUs than the 16x16/16 convolution kernels; exports keep the Conv)
        self.patch_gemm = False
        self._rope_cache: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- construction -----------------------------------------------------------------------------
    def set_ln_fp32(self, on: bool) -> None:
        """Compute every LayerNorm in fp32 (used for fp16 exports)."""
        self.ln_fp32 = on
        for b in self.blocks:
            b.ln_fp32 = on

    def set_gelu_epilogue(self, on: bool) -> None:
        """MLP ``fc1`` + bias + GELU as one cuBLASLt GEMM with a GELU epilogue (CUDA, fp16/bf16).

        The epilogue computes the tanh approximation of GELU (max. deviation from the exact erf GELU
        ~1e-3 absolute, below bf16/fp16 resolution at the activations' scale): a speed option for
        reduced-precision GPU inference, off by default and never used in exports.
        """
        for b in self.blocks:
            b.gelu_epilogue = on

    @classmethod
    def from_state_dict(
        cls, sd: dict[str, torch.Tensor], *, num_heads: int | None = None, ln_eps: float = 1e-5
    ) -> InferenceViT:
        """Build from a DINOv3 ViT state_dict (keys as in the reference checkpoints)."""
        if not is_dinov3_vit_state_dict(sd):
            raise ValueError(
                "state_dict does not have the DINOv3 ViT key layout (patch_embed/blocks/cls_token)"
            )
        cfg = _config_from_state_dict(sd, num_heads, ln_eps)
        m = cls(cfg, sd.get("rope_embed.periods"))
        m._load(sd)
        return m.eval()

    @classmethod
    def from_backbone(cls, backbone: nn.Module) -> InferenceViT:
        """Build from a ``dinov3_ros.models`` ViT backbone (weights copied, fp32)."""
        sd = {k: v.detach().float() for k, v in backbone.state_dict().items()}
        heads = getattr(backbone, "num_heads", None)
        if heads is None:
            attn = getattr(getattr(backbone, "blocks", [None])[0], "attn", None)
            heads = getattr(attn, "num_heads", None)
        eps = getattr(getattr(backbone, "norm", None), "eps", 1e-5)
        m = cls.from_state_dict(sd, num_heads=heads, ln_eps=float(eps))
        m.arch = getattr(backbone, "arch", None)
        m.norm_mean = tuple(getattr(backbone, "norm_mean", (0.485, 0.456, 0.406)))
        m.norm_std = tuple(getattr(backbone, "norm_std", (0.229, 0.224, 0.225)))
        return m

    @torch.no_grad()
    def _load(self, sd: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        D = cfg.embed_dim
        self.patch_embed.weight.copy_(sd["patch_embed.proj.weight"])
        self.patch_embed.bias.copy_(sd["patch_embed.proj.bias"])
        prefix = [sd["cls_token"].reshape(1, 1, D)]
        if cfg.n_storage_tokens:
            prefix.append(sd["storage_tokens"].reshape(1, -1, D))
        self.prefix_tokens.copy_(torch.cat(prefix, 1))
        self.norm.weight.copy_(sd["norm.weight"])
        self.norm.bias.copy_(sd["norm.bias"])
        for i, b in enumerate(self.blocks):
            p = f"blocks.{i}."
            g1 = sd.get(p + "ls1.gamma", torch.ones(D))
            g2 = sd.get(p + "ls2.gamma", torch.ones(D))
            b.norm1.weight.copy_(sd[p + "norm1.weight"])
            b.norm1.bias.copy_(sd[p + "norm1.bias"])
            b.norm2.weight.copy_(sd[p + "norm2.weight"])
            b.norm2.bias.copy_(sd[p + "norm2.bias"])
            b.qkv.weight.copy_(sd[p + "attn.qkv.weight"])
            qb = sd.get(p + "attn.qkv.bias", torch.zeros(3 * D))
            mask = sd.get(p + "attn.qkv.bias_mask")
            if mask is not None:
                if torch.isnan(mask).any():
                    raise ValueError(
                        f"{p}attn.qkv.bias_mask is NaN: load weights or call init_weights() first"
                    )
                qb = qb * mask
            b.qkv.bias.copy_(qb)
            b.proj.weight.copy_(sd[p + "attn.proj.weight"] * g1[:, None])
            b.proj.bias.copy_(sd.get(p + "attn.proj.bias", torch.zeros(D)) * g1)
            if b.swiglu:
                b.w12.weight.copy_(torch.cat([sd[p + "mlp.w1.weight"], sd[p + "mlp.w2.weight"]], 0))
                b.w12.bias.copy_(torch.cat([sd[p + "mlp.w1.bias"], sd[p + "mlp.w2.bias"]], 0))
                b.w3.weight.copy_(sd[p + "mlp.w3.weight"] * g2[:, None])
                b.w3.bias.copy_(sd[p + "mlp.w3.bias"] * g2)
            else:
                b.fc1.weight.copy_(sd[p + "mlp.fc1.weight"])
                b.fc1.bias.copy_(sd[p + "mlp.fc1.bias"])
                b.fc2.weight.copy_(sd[p + "mlp.fc2.weight"] * g2[:, None])
                b.fc2.bias.copy_(sd[p + "mlp.fc2.bias"] * g2)

    # -- RoPE ---------------------------------------------------------------------------------------
    def _rope_tables(self, h: torch.Tensor | int, w: torch.Tensor | int, device: torch.device):
        """cos/sin ``[N, 1, 1, Dh]`` (fp32) incl. identity rows for the prefix tokens; sign folded into sin."""
        Dh = self.embed_dim // self.cfg.num_heads
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2.0 - 1.0
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2.0 - 1.0
        yy = ys[:, None] + 0.0 * xs[None, :]  # meshgrid "ij" by broadcasting (traces without Expand/If)
        xx = xs[None, :] + 0.0 * ys[:, None]
        coords = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)  # [HW, 2] (y, x)
        periods = self.periods.to(device)
        angles = (2.0 * math.pi) * coords[:, :, None] / periods[None, None, :]  # [HW, 2, Dh/4]
        angles = angles.reshape(angles.shape[0], Dh // 2)  # [y-freqs | x-freqs]
        angles = torch.cat([angles, angles], dim=-1)  # [HW, Dh] (no tile -> no If)
        cos, sin = torch.cos(angles), torch.sin(angles)
        sin = torch.cat([-sin[:, : Dh // 2], sin[:, Dh // 2 :]], dim=-1)  # rotate_half sign
        ones = torch.ones(self.n_prefix, Dh, device=device)
        cos = torch.cat([ones, cos], 0)[:, None, None, :]
        sin = torch.cat([ones * 0.0, sin], 0)[:, None, None, :]
        return cos, sin

    def rope(self, h, w, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached RoPE tables for grid ``(h, w)``; in-graph when ``dynamic_rope`` is set."""
        if self.dynamic_rope:
            return self._rope_tables(h, w, device)
        key = (int(h), int(w), str(device))
        hit = self._rope_cache.get(key)
        if hit is None:
            # normal (not inference-mode) tensors, so the cache also serves export/tracing later
            with torch.inference_mode(False), torch.no_grad():
                hit = self._rope_tables(int(h), int(w), device)
            self._rope_cache[key] = hit
        return hit

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        B = x.shape[0]
        p = self.patch_size
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            if x.shape[-2] % p or x.shape[-1] % p:
                raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is not a multiple of patch size {p}")
        if self.patch_gemm and not torch.jit.is_tracing():
            C, h, w = x.shape[1], x.shape[-2] // p, x.shape[-1] // p
            pt = x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B * h * w, C * p * p)
            wt = self.patch_embed.weight.reshape(self.embed_dim, C * p * p)
            t = F.linear(pt, wt, self.patch_embed.bias).reshape(B, h * w, self.embed_dim)
        else:
            t = self.patch_embed(x)  # [B, D, h, w]
            h, w = t.shape[-2], t.shape[-1]
            t = t.flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix_tokens.expand(B, -1, -1).to(t.dtype), t], dim=1)
        cos, sin = self.rope(h, w, x.device)
        want = set(self.layer_indices)
        taken: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            t = blk(t, cos, sin)
            if i in want:
                taken.append(t)
        D = self.embed_dim
        gh, gw = h, w
        last = _ln(t, self.norm, self.ln_fp32)
        cls = last[:, 0]
        patch = last[:, self.n_prefix :].reshape(B, gh, gw, D)
        layers = []
        for i, lt in zip(sorted(want), taken):
            n = last if i == self.cfg.depth - 1 else _ln(lt, self.norm, self.ln_fp32)
            layers.append((n[:, self.n_prefix :].reshape(B, gh, gw, D).permute(0, 3, 1, 2), n[:, 0]))
        return patch, cls, layers

"""Self-supervised meta-architecture: student, EMA teacher and Gram teacher with the DINOv3 losses."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import DINOHead
from .losses import dino_loss_terms, gram_loss, ibot_loss, koleo_loss, koleo_loss_distributed, sinkhorn_knopp
from .sim import SimLossConfig, SimObjective

__all__ = [
    "SSLMetaArch",
    "build_backbone_from_config",
    "ema_update",
    "resize_patch_features",
    "target_stats",
]


def build_backbone_from_config(model_cfg: dict[str, Any], *, drop_path: bool = True) -> nn.Module:
    """``dinov3_ros.models.build_backbone(arch, **backbone)``; ``drop_path=False`` zeroes stochastic depth
    (teachers)."""
    from dinov3_ros.models import build_backbone

    kwargs = dict(model_cfg.get("backbone") or {})
    if not drop_path and "drop_path_rate" in kwargs:
        kwargs["drop_path_rate"] = 0.0
    return build_backbone(model_cfg["arch"], **kwargs)


def resize_patch_features(x: Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    """``[B, h·w, D]`` patch features resized bicubically (no antialias) to ``dst_hw`` -> ``[B, H·W, D]``."""
    if tuple(src_hw) == tuple(dst_hw):
        return x
    B, _N, D = x.shape
    m = x.transpose(1, 2).reshape(B, D, *src_hw).float()
    m = F.interpolate(m, size=dst_hw, mode="bicubic", align_corners=False, antialias=False)
    return m.flatten(2).transpose(1, 2).to(x.dtype)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def target_stats(probs: Tensor, cls: Tensor) -> dict[str, Tensor]:
    """Collapse diagnostics: mean entropy of the teacher's Sinkhorn-Knopp targets ``probs [..., K]``
    (``log K`` = uniform, no signal), their mean maximum probability, and the mean / std of the pairwise
    cosine between the teacher's CLS tokens ``cls [N, D]`` (mean 1 = every image looks the same)."""
    with torch.autocast(probs.device.type, enabled=False):
        p = probs.float().flatten(0, -2)
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
        c = F.normalize(cls.float(), dim=-1)
        cos = c @ c.t()
        n = c.shape[0] * (c.shape[0] - 1)  # off-diagonal pairs, weighted instead of gathered (no sync)
        w = 1.0 - torch.eye(c.shape[0], device=c.device)
        mean = (cos * w).sum() / n if n else ent * 0
        std = (((cos - mean) * w).square().sum() / (n - 1)).sqrt() if n > 1 else ent * 0
        return {
            "stat/target_entropy": ent,
            "stat/teacher_max_prob": p.max(-1).values.mean(),
            "stat/cls_cos_mean": mean,
            "stat/cls_cos_std": std,
        }


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t = m·t + (1-m)·s`` over matching parameters (local shards under FSDP)."""
    tp = [_local(p.data) for p in teacher.parameters()]
    sp = [_local(p.data) for p in student.parameters()]
    if len(tp) != len(sp):
        raise RuntimeError(f"teacher has {len(tp)} parameters, student {len(sp)}")
    torch._foreach_mul_(tp, momentum)
    torch._foreach_add_(tp, sp, alpha=1.0 - momentum)


class SSLMetaArch(nn.Module):
    """DINO + iBOT + KoLeo (+ Gram anchoring) pretraining model.

    ``student`` / ``teacher`` are ``ModuleDict(backbone, dino_head, ibot_head)``; the teacher is an EMA
    copy without gradients; ``gram_teacher`` (optional) is a frozen backbone. ``forward_losses(batch, ...)``
    returns ``(total_loss, {name: value})``.
    """

    def __init__(self, cfg: dict[str, Any], backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        student_bb = backbone if backbone is not None else build_backbone_from_config(cfg["model"])
        dim = int(student_bb.embed_dim)
        d, ib = cfg["dino"], cfg["ibot"]
        dino_head = DINOHead(
            dim,
            d["n_prototypes"],
            d["hidden_dim"],
            d["bottleneck_dim"],
            d.get("nlayers", 3),
            norm_last_layer=bool(d.get("norm_last_layer", False)),
        )
        ibot_head = DINOHead(
            dim,
            ib["n_prototypes"],
            ib["hidden_dim"],
            ib["bottleneck_dim"],
            ib.get("nlayers", 3),
            norm_last_layer=bool(ib.get("norm_last_layer", False)),
        )
        self.student = nn.ModuleDict({"backbone": student_bb, "dino_head": dino_head, "ibot_head": ibot_head})
        self.teacher = copy.deepcopy(self.student)
        if hasattr(self.teacher.backbone, "set_drop_path_rate"):
            self.teacher.backbone.set_drop_path_rate(0.0)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.gram_teacher: nn.Module | None = None
        if cfg["gram"].get("use", False):
            self.gram_teacher = copy.deepcopy(student_bb)
            if hasattr(self.gram_teacher, "set_drop_path_rate"):
                self.gram_teacher.set_drop_path_rate(0.0)
            for p in self.gram_teacher.parameters():
                p.requires_grad_(False)
        self.sim: SimObjective | None = None
        sim_cfg = cfg.get("sim") or {}
        if sim_cfg.get("enabled", False):
            self.sim = SimObjective(dim, SimLossConfig.from_dict(sim_cfg.get("losses")))
        self.patch_size = int(student_bb.patch_size)
        # iBOT needs a mask token (ViT); ConvNeXt students train with DINO + KoLeo (+ Gram) only
        self.ibot_enabled = float(ib.get("loss_weight", 1.0)) > 0 and hasattr(student_bb, "mask_token")
        self.train()

    def train(self, mode: bool = True) -> SSLMetaArch:
        super().train(mode)
        self.teacher.eval()  # as the reference: EMA teacher without drop path or RoPE box jitter
        if self.gram_teacher is not None:
            self.gram_teacher.eval()
        return self

    # -------------------------------------------------------------- teachers
    @torch.no_grad()
    def teacher_targets(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, Tensor]:
        """EMA teacher on the unmasked global crops -> Sinkhorn-Knopp DINO targets ``[G, B, K]`` and iBOT
        targets ``[M, K]`` at the masked positions."""
        g = batch["global_crops"]
        n_g = int(batch.get("n_global_crops", 2))
        B = g.shape[0] // n_g
        out = self.teacher.backbone.forward_features(g)
        cls = out["x_norm_clstoken"]
        dino_logits = self.teacher.dino_head(cls)
        dino_t = sinkhorn_knopp(dino_logits, teacher_temp).view(n_g, B, -1)
        patches = out["x_norm_patchtokens"]
        idx = batch["mask_indices"]
        masked = patches.flatten(0, 1).index_select(0, idx)
        ibot_t = (
            sinkhorn_knopp(self.teacher.ibot_head(masked), teacher_temp) if idx.numel() else masked[:, :0]
        )
        return {"dino": dino_t, "ibot": ibot_t, "stats": target_stats(dino_t, cls)}

    @torch.no_grad()
    def gram_targets(self, batch: dict[str, Any], student_hw: tuple[int, int]) -> Tensor:
        """Gram teacher patch features on the Gram-teacher crops (or the global crops), resized bicubically
        to the student grid ``student_hw``."""
        assert self.gram_teacher is not None
        x = batch.get("gram_teacher_crops")
        if x is None:
            x = batch["global_crops"]
        feats = self.gram_teacher.forward_features(x)["x_norm_patchtokens"]
        hw = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if feats.shape[1] != hw[0] * hw[1]:  # e.g. ConvNeXt stride 32
            side = round(feats.shape[1] ** 0.5)
            hw = (side, feats.shape[1] // side)
        return resize_patch_features(feats, hw, student_hw)

    @torch.no_grad()
    def update_gram_teacher(self) -> None:
        """Copy the EMA teacher backbone into the Gram teacher (``update_gram(m=0)``)."""
        if self.gram_teacher is None:
            raise RuntimeError("gram.use is off: no Gram teacher")
        for gt, t in zip(self.gram_teacher.parameters(), self.teacher.backbone.parameters()):
            _local(gt.data).copy_(_local(t.data))

    # -------------------------------------------------------------- losses
    def forward_losses(
        self,
        batch: dict[str, Any],
        *,
        teacher_temp: float,
        local_weight: float = 1.0,
        gram_weight: float = 0.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        g = batch["global_crops"]
        n_g = int(batch.get("n_global_crops", 2))
        B = g.shape[0] // n_g
        local = batch.get("local_crops")
        masks = batch["masks"]
        use_masks = self.ibot_enabled
        if not use_masks:  # no iBOT: nothing is masked and no patch targets are needed
            batch = {**batch, "mask_indices": batch["mask_indices"][:0], "masks": torch.zeros_like(masks)}
            masks = batch["masks"]
        targets = self.teacher_targets(batch, teacher_temp)

        bb = self.student.backbone
        if local is not None and local.numel():
            s_g, s_l = bb.forward_features([g, local], masks=[masks, None] if use_masks else None)
        else:
            s_g, s_l = bb.forward_features(g, masks=masks if use_masks else None), None
        g_cls = s_g["x_norm_clstoken"]
        l_cls = s_l["x_norm_clstoken"] if s_l is not None else g_cls[:0]
        n_l = l_cls.shape[0] // B if B else 0
        logits = self.student.dino_head(torch.cat([g_cls, l_cls]))
        K = logits.shape[-1]
        s_dino_g = logits[: g_cls.shape[0]].view(n_g, B, K)
        s_dino_l = logits[g_cls.shape[0] :].view(n_l, B, K) if n_l else None
        d = cfg["dino"]
        st = float(d.get("student_temp", 0.1))
        terms = dino_loss_terms(
            s_dino_g, targets["dino"], s_dino_l, student_temp=st, local_weight=local_weight
        )
        losses: dict[str, Tensor] = {"dino_global": terms["global"], "dino_local": terms["local"]}
        total = float(d.get("loss_weight", 1.0)) * terms["total"]

        iw = float(cfg["ibot"].get("loss_weight", 1.0))
        if use_masks:
            patches = s_g["x_norm_patchtokens"]
            masked = patches.flatten(0, 1).index_select(0, batch["mask_indices"])
            s_ibot = self.student.ibot_head(masked)
            losses["ibot"] = ibot_loss(s_ibot, targets["ibot"], masks, st)
            total = total + iw * losses["ibot"]

        kw = float(d.get("koleo_loss_weight", 0.0))
        if kw > 0:
            chunks = g_cls.chunk(n_g)
            if d.get("koleo_distributed", False):
                gs = int(d.get("koleo_group_size", 16))
                k = sum(koleo_loss_distributed(c, gs) for c in chunks) / n_g
            else:
                k = sum(koleo_loss(c) for c in chunks) / n_g
            losses["koleo"] = k
            total = total + kw * n_g * k

        if self.gram_teacher is not None and (gram_weight > 0 or cfg["gram"].get("always_compute", False)):
            hw = (g.shape[-2] // self.patch_size, g.shape[-1] // self.patch_size)
            tgt = self.gram_targets(batch, hw)
            gc = cfg["gram"]
            losses["gram"] = gram_loss(
                s_g["x_norm_patchtokens"],
                tgt,
                normalize=bool(gc.get("normalize", True)),
                img_level=bool(gc.get("img_level", True)),
                remove_neg=bool(gc.get("remove_neg", False)),
            )
            total = total + gram_weight * losses["gram"]
        if self.sim is not None and batch.get("sim") is not None:
            sim = self.sim(s_g["x_norm_patchtokens"], batch["sim"], masks.any(-1), s_g["x_norm_clstoken"])
            total = total + sim.pop("sim")
            losses.update(sim)
        losses.update(targets["stats"])
        losses["total"] = total
        return total, losses

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        ema_update(self.teacher, self.student, momentum)

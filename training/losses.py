"""DINOv3 pretraining losses: Sinkhorn-Knopp targets, DINO, iBOT, KoLeo and Gram anchoring.

Published definitions (DINOv2/DINOv3): Sinkhorn-Knopp with 3 iterations and all-reduced marginals,
CLS cross-entropy at student temperature 0.1 with the 2/18 (global, diagonal ignored) and 16/18
(local) weighting, iBOT on masked patches weighted 1/n_masked per image, KoLeo on L2-normalised CLS
with nearest neighbour by maximum dot product, Gram anchoring as the MSE between per-image Gram
matrices of L2-normalised patch features.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dino_crop_scales",
    "dino_cross_entropy",
    "dino_loss",
    "dino_loss_terms",
    "fp32_loss",
    "gram_loss",
    "ibot_loss",
    "koleo_loss",
    "koleo_loss_distributed",
    "sinkhorn_knopp",
]


_F = TypeVar("_F", bound=Callable)


def fp32_loss(fn: _F) -> _F:
    """Run ``fn`` with autocast off on CPU and CUDA, so its matmuls (the DINO einsum, the Gram
    products) are float32 whatever the caller's autocast (the reference computes losses in fp32)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _dist_ready(group=None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _all_reduce(x: Tensor, op=None, group=None) -> Tensor:
    if _dist_ready(group):
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM, group=group)
    return x


@torch.no_grad()
@fp32_loss
def sinkhorn_knopp(
    teacher_logits: Tensor, teacher_temp: float, n_iterations: int = 3, *, group=None
) -> Tensor:
    """Sinkhorn-Knopp centering of teacher logits ``[B, K]`` -> targets ``[B, K]`` (rows sum to 1).

    Normalises ``Q = exp(logits / T)ᵀ`` alternately so the prototypes (rows of ``Q``) get equal mass
    ``1/K`` over the *global* batch and each sample gets mass ``1/B``; the prototype marginals and the
    total mass are all-reduced across ranks when a process group is initialised, and ``B`` is the
    total number of rows over all ranks (so ranks may hold different numbers of rows, as for iBOT).
    """
    if teacher_logits.ndim != 2:
        raise ValueError(
            f"sinkhorn_knopp expects teacher_logits [B, K], got shape {tuple(teacher_logits.shape)}"
        )
    if teacher_temp <= 0:
        raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
    logits = teacher_logits.float() / teacher_temp
    # A global constant shift leaves the result unchanged (the first step divides by the total mass)
    # and keeps exp() finite at low temperatures.
    shift = logits.max() if logits.numel() else logits.new_zeros(())
    shift = _all_reduce(shift.clone(), dist.ReduceOp.MAX if dist.is_available() else None, group)
    Q = torch.exp(logits - shift).t()  # K x B_local
    K = Q.shape[0]
    B = _all_reduce(Q.new_full((), float(Q.shape[1])), group=group)  # a fill, not a host->device copy
    sum_Q = _all_reduce(Q.sum(), group=group)
    Q /= sum_Q
    for _ in range(n_iterations):
        sum_rows = _all_reduce(Q.sum(dim=1, keepdim=True), group=group)
        Q /= sum_rows
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def _check_crops(name: str, x: Tensor) -> None:
    if x.ndim != 3:
        raise ValueError(f"{name} must be [n_crops, B, K], got shape {tuple(x.shape)}")


@fp32_loss
def dino_cross_entropy(
    student_logits: Tensor, teacher_probs: Tensor, student_temp: float = 0.1, ignore_diagonal: bool = False
) -> Tensor:
    """Mean over (student crop, teacher crop, sample) of ``-Σ_k t log softmax(s / T_s)``.

    ``student_logits`` is ``[S, B, K]``, ``teacher_probs`` ``[T, B, K]``. With ``ignore_diagonal``
    the pairs of the same crop (s == t) are left out (the global-crop term: A<->B only).
    """
    _check_crops("student_logits", student_logits)
    _check_crops("teacher_probs", teacher_probs)
    S, B, K = student_logits.shape
    T = teacher_probs.shape[0]
    if teacher_probs.shape[1:] != (B, K):
        raise ValueError(
            f"teacher_probs {tuple(teacher_probs.shape)} does not match student_logits {tuple(student_logits.shape)}"
        )
    logp = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    pair = -torch.einsum("sbk,tbk->st", logp, teacher_probs.float())  # summed over samples
    if not ignore_diagonal:
        return pair.sum() / (B * S * T)
    n_diag = min(S, T)
    if S * T - n_diag == 0:
        raise ValueError("ignore_diagonal with a single crop on each side leaves no pairs")
    pair = _zero_diag(pair)
    return pair.sum() / (B * (S * T - n_diag))


def _zero_diag(pair: Tensor) -> Tensor:
    # torch.eye, not an index_put on arange indices: that launches a synchronising bounds check on CUDA
    eye = torch.eye(pair.shape[0], pair.shape[1], device=pair.device, dtype=torch.bool)
    return pair.masked_fill(eye, 0.0)


def dino_crop_scales(n_global: int, n_local: int, ignore_diagonal: bool = True) -> tuple[float, float]:
    """Published term weights: global ``G(G-1)`` pairs and local ``G·L`` pairs over their sum (2/18, 16/18)."""
    g_terms = n_global * (n_global - 1) if ignore_diagonal else n_global * n_global
    l_terms = n_global * n_local
    total = g_terms + l_terms
    if total == 0:
        raise ValueError("no DINO terms: need at least 2 global crops or 1 local crop")
    return g_terms / total, l_terms / total


def dino_loss_terms(
    student_global_logits: Tensor,
    teacher_probs: Tensor,
    student_local_logits: Tensor | None = None,
    *,
    student_temp: float = 0.1,
    local_weight: float = 1.0,
    ignore_diagonal: bool = True,
) -> dict[str, Tensor]:
    """DINO loss split into ``global``, ``local`` (each a mean over its pairs) and weighted ``total``.

    ``total = g/(g+l) * global + local_weight * l/(g+l) * local`` with ``g = G(G-1)`` and ``l = G·L``.
    """
    _check_crops("student_global_logits", student_global_logits)
    n_global = student_global_logits.shape[0]
    n_local = 0 if student_local_logits is None else student_local_logits.shape[0]
    g_scale, l_scale = dino_crop_scales(teacher_probs.shape[0], n_local, ignore_diagonal)
    zero = student_global_logits.new_zeros((), dtype=torch.float32)
    glob = (
        dino_cross_entropy(student_global_logits, teacher_probs, student_temp, ignore_diagonal)
        if g_scale > 0 and n_global > 0
        else zero
    )
    loc = (
        dino_cross_entropy(student_local_logits, teacher_probs, student_temp, False)
        if student_local_logits is not None and n_local > 0
        else zero
    )
    total = g_scale * glob + local_weight * l_scale * loc
    return {"global": glob, "local": loc, "total": total}


def dino_loss(
    student_global_logits: Tensor,
    teacher_probs: Tensor,
    student_local_logits: Tensor | None = None,
    *,
    student_temp: float = 0.1,
    local_weight: float = 1.0,
    ignore_diagonal: bool = True,
) -> Tensor:
    """Weighted DINO CLS loss (see :func:`dino_loss_terms`). Shapes ``[n_crops, B, K]``."""
    return dino_loss_terms(
        student_global_logits,
        teacher_probs,
        student_local_logits,
        student_temp=student_temp,
        local_weight=local_weight,
        ignore_diagonal=ignore_diagonal,
    )["total"]


@fp32_loss
def ibot_loss(
    student_masked_logits: Tensor, teacher_masked_probs: Tensor, masks: Tensor, student_temp: float = 0.1
) -> Tensor:
    """iBOT masked-patch loss.

    ``student_masked_logits`` / ``teacher_masked_probs`` are ``[M, K]`` rows for the masked patches in
    ``masks.nonzero()`` order (image-major); ``masks`` is ``[n_images, N]`` bool over *all* global-crop
    images. Each masked patch is weighted ``1/n_masked(image)`` and the sum is divided by ``n_images``.
    """
    if masks.ndim != 2 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be a bool [n_images, N] tensor, got {masks.dtype} {tuple(masks.shape)}")
    M = student_masked_logits.shape[0]
    # the count of masked patches is checked where reading it costs no device sync (CPU tensors)
    n_true = int(masks.sum()) if masks.device.type == "cpu" else M
    if teacher_masked_probs.shape[0] != M or n_true != M:
        raise ValueError(
            f"ibot_loss: {n_true} masked patches but student/teacher rows are "
            f"{M}/{teacher_masked_probs.shape[0]}"
        )
    if M == 0:
        return student_masked_logits.sum() * 0.0
    logp = F.log_softmax(student_masked_logits.float() / student_temp, dim=-1)
    ce = -(teacher_masked_probs.float() * logp).sum(-1)
    counts = masks.sum(-1)
    image = torch.arange(masks.shape[0], device=masks.device).repeat_interleave(counts, output_size=M)
    weight = (1.0 / counts.clamp(min=1).float())[image]
    return (ce * weight).sum() / masks.shape[0]


def _nn_log_distance(x: Tensor, candidates: Tensor, self_index: Tensor, eps: float) -> Tensor:
    """``log(||x_i - NN(x_i)|| + eps)`` with NN by max dot product among ``candidates`` excluding self."""
    with torch.no_grad():
        dots = x @ candidates.t()
        dots.scatter_(1, self_index[:, None], float("-inf"))  # not an index_put: that syncs on CUDA
        nn_idx = dots.argmax(dim=1)
    d = (x - candidates[nn_idx]).norm(dim=-1)
    return torch.log(d + eps)


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo regulariser on ``[B, D]``: ``-mean_i log(||x_i - NN(x_i)||₂ + eps)`` of L2-normalised rows."""
    if x.ndim != 2:
        raise ValueError(f"koleo_loss expects [B, D], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError("koleo_loss needs at least 2 samples")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = F.normalize(x.float(), p=2, dim=-1, eps=1e-8)
        idx = torch.arange(x.shape[0], device=x.device)
        return -_nn_log_distance(x, x, idx, eps).mean()


def koleo_loss_distributed(
    x: Tensor, group_size: int | None = 16, eps: float = 1e-8, *, group=None
) -> Tensor:
    """Distributed KoLeo: all-gather the rows of every rank, then nearest neighbours within contiguous
    groups of ``group_size`` global samples (``None``: the whole global batch).

    Returns the mean over this rank's rows; averaged over ranks (as DDP/FSDP gradients are) it equals
    the single-process grouped loss on the concatenated batch when ranks hold equal batch sizes.
    Gradients flow through this rank's rows.
    """
    if x.ndim != 2:
        raise ValueError(f"koleo_loss_distributed expects [B, D], got shape {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = F.normalize(x.float(), p=2, dim=-1, eps=1e-8)
        B = x.shape[0]
        if _dist_ready(group):
            ws, rank = dist.get_world_size(group), dist.get_rank(group)
            gathered = [torch.empty_like(x) for _ in range(ws)]
            dist.all_gather(gathered, x.detach().contiguous(), group=group)
            gathered[rank] = x
            allx = torch.cat(gathered)
            start = rank * B
        else:
            allx, start = x, 0
        total = allx.shape[0]
        gs = total if group_size is None or group_size <= 0 else group_size
        if total % gs != 0:
            raise ValueError(f"global batch {total} is not a multiple of koleo group_size {gs}")
        if gs < 2:
            raise ValueError("koleo group_size must be >= 2")
        losses = []
        for g0 in range(0, total, gs):
            lo, hi = max(start, g0), min(start + B, g0 + gs)  # this rank's rows in the group
            if lo >= hi:
                continue
            self_index = torch.arange(lo - g0, hi - g0, device=x.device)
            losses.append(-_nn_log_distance(x[lo - start : hi - start], allx[g0 : g0 + gs], self_index, eps))
        return torch.cat(losses).mean()


@fp32_loss
def gram_loss(
    student_patches: Tensor,
    teacher_patches: Tensor,
    normalize: bool = True,
    img_level: bool = True,
    remove_neg: bool = False,
) -> Tensor:
    """Gram anchoring: MSE between the Gram matrices of student and teacher patch features ``[B, N, D]``.

    ``normalize`` L2-normalises along D first; ``img_level`` builds one ``N×N`` Gram per image
    (otherwise one ``BN×BN`` Gram over all patches); ``remove_neg`` zeroes negative similarities of
    both matrices. The teacher side carries no gradient.
    """
    if student_patches.ndim != 3 or student_patches.shape != teacher_patches.shape:
        raise ValueError(
            f"gram_loss expects matching [B, N, D] inputs, got {tuple(student_patches.shape)} and "
            f"{tuple(teacher_patches.shape)}"
        )
    s = student_patches.float()
    t = teacher_patches.detach().float()
    if normalize:
        s = F.normalize(s, dim=-1)
        t = F.normalize(t, dim=-1)
    if not img_level:
        s = s.flatten(0, 1).unsqueeze(0)
        t = t.flatten(0, 1).unsqueeze(0)
    gs = s @ s.transpose(-1, -2)
    gt = t @ t.transpose(-1, -2)
    if remove_neg:
        gs = gs.clamp(min=0)
        gt = gt.clamp(min=0)
    return F.mse_loss(gs, gt)

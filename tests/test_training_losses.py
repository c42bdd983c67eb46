"""DINOv3 losses, head, schedules and parameter groups against straightforward loop implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.heads import DINOHead
from training.losses import (
    dino_crop_scales,
    dino_loss,
    dino_loss_terms,
    gram_loss,
    ibot_loss,
    koleo_loss,
    koleo_loss_distributed,
    sinkhorn_knopp,
)


def _ref_sinkhorn(logits: np.ndarray, temp: float, n_iter: int) -> np.ndarray:
    """The published algorithm written out in float64 numpy (single process)."""
    Q = np.exp(logits.astype(np.float64) / temp).T  # K x B
    K, B = Q.shape
    Q /= Q.sum()
    for _ in range(n_iter):
        for k in range(K):
            Q[k, :] /= Q[k, :].sum()
        Q /= K
        for b in range(B):
            Q[:, b] /= Q[:, b].sum()
        Q /= B
    Q *= B
    return Q.T


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_sinkhorn_matches_reference_and_has_published_marginals():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(24, 40, generator=g)
    q = sinkhorn_knopp(logits, 0.07, n_iterations=3)
    ref = _ref_sinkhorn(logits.numpy(), 0.07, 3)
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-3, atol=1e-6)  # fp32 vs fp64
    # every sample's target is a distribution
    np.testing.assert_allclose(q.sum(1).numpy(), np.ones(24), atol=1e-5)
    assert (q >= 0).all()
    # at convergence the prototypes have equal mass B/K over the batch
    qc = sinkhorn_knopp(logits, 0.5, n_iterations=200)
    np.testing.assert_allclose(qc.sum(0).numpy(), np.full(40, 24 / 40), rtol=1e-3)
    np.testing.assert_allclose(qc.sum(1).numpy(), np.ones(24), atol=1e-5)
    # a global shift of the logits changes nothing (and large logits do not overflow exp)
    np.testing.assert_allclose(sinkhorn_knopp(logits + 100.0, 0.07).numpy(), q.numpy(), rtol=2e-3, atol=1e-6)
    with pytest.raises(ValueError, match="teacher_logits"):
        sinkhorn_knopp(torch.randn(2, 3, 4), 0.1)


def _ref_ce(s_logits: np.ndarray, t_probs: np.ndarray, temp: float) -> float:
    return float(-(t_probs * _log_softmax(s_logits / temp)).sum())


@pytest.mark.parametrize(("n_global", "n_local"), [(2, 8), (2, 0), (3, 5)])
def test_dino_loss_matches_loop_over_crop_pairs(n_global, n_local):
    g = torch.Generator().manual_seed(2)
    B, K = 3, 17
    sg = torch.randn(n_global, B, K, generator=g)
    sl = torch.randn(n_local, B, K, generator=g) if n_local else None
    tp = torch.softmax(torch.randn(n_global, B, K, generator=g), -1)
    glob, n_gp = 0.0, 0
    for s in range(n_global):
        for t in range(n_global):
            if s == t:
                continue
            n_gp += 1
            for b in range(B):
                glob += _ref_ce(sg[s, b].numpy(), tp[t, b].numpy(), 0.1)
    glob /= n_gp * B
    loc, n_lp = 0.0, 0
    for s in range(n_local):
        for t in range(n_global):
            n_lp += 1
            for b in range(B):
                loc += _ref_ce(sl[s, b].numpy(), tp[t, b].numpy(), 0.1)
    loc = loc / (n_lp * B) if n_lp else 0.0
    g_terms, l_terms = n_global * (n_global - 1), n_global * n_local
    for lw in (1.0, 0.5):
        expect = g_terms / (g_terms + l_terms) * glob + lw * l_terms / (g_terms + l_terms) * loc
        got = dino_loss(sg, tp, sl, local_weight=lw)
        assert got.item() == pytest.approx(expect, rel=1e-5)
    terms = dino_loss_terms(sg, tp, sl)
    assert terms["global"].item() == pytest.approx(glob, rel=1e-5)
    assert terms["local"].item() == pytest.approx(loc, rel=1e-5, abs=1e-7)


def test_dino_published_scales():
    assert dino_crop_scales(2, 8) == pytest.approx((2 / 18, 16 / 18))
    assert dino_crop_scales(2, 8, ignore_diagonal=False) == pytest.approx((4 / 20, 16 / 20))


def test_ibot_loss_matches_per_image_weighting():
    g = torch.Generator().manual_seed(3)
    n_img, N, K = 4, 9, 11
    masks = torch.zeros(n_img, N, dtype=torch.bool)
    masks[0, [1, 2, 5]] = True
    masks[2, [0]] = True
    masks[3, :6] = True  # image 1 unmasked
    M = int(masks.sum())
    s = torch.randn(M, K, generator=g)
    t = torch.softmax(torch.randn(M, K, generator=g), -1)
    expect, row = 0.0, 0
    for i in range(n_img):
        n_i = int(masks[i].sum())
        for p in range(N):
            if masks[i, p]:
                expect += _ref_ce(s[row].numpy(), t[row].numpy(), 0.1) / n_i
                row += 1
    expect /= n_img
    assert ibot_loss(s, t, masks).item() == pytest.approx(expect, rel=1e-5)
    with pytest.raises(ValueError, match="masked patches"):
        ibot_loss(s[:-1], t, masks)


def _ref_koleo(x: np.ndarray) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(x)):
        best, j_best = -np.inf, -1
        for j in range(len(x)):
            if j != i and x[i] @ x[j] > best:
                best, j_best = x[i] @ x[j], j
        total += math.log(np.linalg.norm(x[i] - x[j_best]) + 1e-8)
    return -total / len(x)


def test_koleo_matches_nearest_neighbour_loop_and_groups():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 5, generator=g) * 3
    assert koleo_loss(x).item() == pytest.approx(_ref_koleo(x.double().numpy()), rel=1e-5)
    # grouped variant on one process: mean over groups of contiguous samples
    expect = np.mean([_ref_koleo(x[i : i + 4].double().numpy()) for i in range(0, 12, 4)])
    assert koleo_loss_distributed(x, group_size=4).item() == pytest.approx(expect, rel=1e-5)
    assert koleo_loss_distributed(x, group_size=None).item() == pytest.approx(koleo_loss(x).item(), rel=1e-6)
    # gradients are finite and the loss pushes nearest neighbours apart
    y = x.clone().requires_grad_(True)
    koleo_loss(y).backward()
    assert torch.isfinite(y.grad).all()


def _ref_gram(s: np.ndarray, t: np.ndarray, normalize=True, img_level=True, remove_neg=False) -> float:
    def norm(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True) if normalize else a

    s, t = norm(s.astype(np.float64)), norm(t.astype(np.float64))
    if not img_level:
        s, t = s.reshape(1, -1, s.shape[-1]), t.reshape(1, -1, t.shape[-1])
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            for j in range(s.shape[1]):
                gs, gt = s[b, i] @ s[b, j], t[b, i] @ t[b, j]
                if remove_neg:
                    gs, gt = max(gs, 0.0), max(gt, 0.0)
                total += (gs - gt) ** 2
                count += 1
    return total / count


@pytest.mark.parametrize(
    ("normalize", "img_level", "remove_neg"), [(True, True, False), (True, False, False), (False, True, True)]
)
def test_gram_loss_matches_loop(normalize, img_level, remove_neg):
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    got = gram_loss(s, t, normalize=normalize, img_level=img_level, remove_neg=remove_neg).item()
    assert got == pytest.approx(_ref_gram(s.numpy(), t.numpy(), normalize, img_level, remove_neg), rel=1e-5)


def test_gram_loss_zero_for_identical_and_scale_invariant():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(3, 10, 8, generator=g), torch.randn(3, 10, 8, generator=g)
    assert gram_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-7)
    base = gram_loss(s, t).item()
    assert base > 0
    scale = torch.rand(3, 10, 1, generator=g) * 10 + 0.1  # per-patch positive scales
    assert gram_loss(s * scale, t * 7.0).item() == pytest.approx(base, rel=1e-5)
    assert gram_loss(s * 5, t, normalize=False).item() != pytest.approx(
        gram_loss(s, t, normalize=False).item()
    )
    # the teacher side has no gradient
    sg, tg = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    gram_loss(sg, tg).backward()
    assert sg.grad is not None and tg.grad is None


def test_dino_head_structure():
    head = DINOHead(32, out_dim=50, hidden_dim=64, bottleneck_dim=16, nlayers=3)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    gelus = [m for m in head.mlp if isinstance(m, torch.nn.GELU)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 16)]
    assert len(gelus) == 2
    assert head.last_layer.bias is None and head.last_layer.weight.shape == (50, 16)
    x = torch.randn(5, 32)
    z = head(x, no_last_layer=True)
    np.testing.assert_allclose(z.norm(dim=-1).detach().numpy(), np.ones(5), atol=1e-5)
    torch.testing.assert_close(head(x), head(z, only_last_layer=True))
    assert head(x).shape == (5, 50)


def test_schedules_and_param_groups():
    from training.config import load_config
    from training.param_groups import build_param_groups, lr_multiplier, wd_multiplier
    from training.schedules import Schedule, build_schedules, scaled_lr

    warm = Schedule(peak=1.0, warmup_iters=10)
    assert [warm(i) for i in (0, 5, 10, 1000)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    cos = Schedule(peak=1.0, end=0.0, warmup_iters=0, cosine_iters=10)
    assert [cos(0), cos(5), cos(10), cos(50)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    gram = Schedule(
        peak=2.0, start_iter=100, warmup_iters=10, warmup_start=0.0, warmup_kind="cosine", before=0.0
    )
    assert [gram(99), gram(100), gram(105), gram(110), gram(500)] == pytest.approx([0, 0, 1.0, 2.0, 2.0])
    assert scaled_lr(5e-5, "sqrt_wrt_1024", 4096) == pytest.approx(4e-4)
    cfg = load_config(
        None,
        [
            "optim.freeze_last_layer_iters=3",
            "teacher.warmup_iters=4",
            "optim.warmup_iters=2",
            "train.iterations=20",
        ],
    )
    s = build_schedules(cfg, 1024)
    assert s["last_layer_lr"](2) == 0.0 and s["last_layer_lr"](3) == 1.0
    assert s["teacher_temp"](0) == pytest.approx(0.04) and s["teacher_temp"](4) == pytest.approx(0.07)
    assert s["lr"](1) == pytest.approx(0.5 * 4 * 5e-5) and s["lr"](19) == pytest.approx(4 * 5e-5)

    L = 12
    assert lr_multiplier("blocks.11.mlp.fc1.weight", L, 0.9, 0.2) == pytest.approx(0.9)
    assert lr_multiplier("blocks.0.attn.qkv.weight", L, 0.9, 0.2) == pytest.approx(0.9**12)
    assert lr_multiplier("patch_embed.proj.weight", L, 0.9, 0.2) == pytest.approx(0.9**13 * 0.2)
    assert lr_multiplier("cls_token", L, 0.9, 0.2) == pytest.approx(0.9**13)
    assert lr_multiplier("norm.weight", L, 0.9, 0.2) == 1.0
    assert wd_multiplier("blocks.0.ls1.gamma") == 0 and wd_multiplier("blocks.0.norm1.weight") == 0
    assert wd_multiplier("blocks.0.attn.qkv.bias") == 0 and wd_multiplier("blocks.0.attn.qkv.weight") == 1
    assert wd_multiplier("cls_token") == 1

    student = torch.nn.ModuleDict({"dino_head": DINOHead(8, 10, 16, 4), "ibot_head": DINOHead(8, 10, 16, 4)})
    groups = build_param_groups(student, 0.9, 0.2)
    last = [g for g in groups if g["is_last_layer"]]
    assert len(last) == 2 and all(g["lr_multiplier"] == 1.0 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(student.parameters()))


def test_gram_teacher_features_resized_to_student_grid_keep_layout():
    from training.meta_arch import resize_patch_features

    h = w = 8
    rr, cc = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    feats = torch.stack([rr.flatten(), cc.flatten(), torch.ones(h * w)], -1)[None].repeat(
        2, 1, 1
    )  # [B, hw, 3]
    out = resize_patch_features(feats, (h, w), (4, 4))
    assert out.shape == (2, 16, 3)
    grid = out[0].reshape(4, 4, 3)
    # bicubic 2x downsampling of a ramp: the value at the centre of each 2x2 block (row-major layout kept)
    inner = grid[1:3, 1:3]
    torch.testing.assert_close(inner[..., 0], torch.tensor([[2.5, 2.5], [4.5, 4.5]]), atol=0.05, rtol=0)
    torch.testing.assert_close(inner[..., 1], torch.tensor([[2.5, 4.5], [2.5, 4.5]]), atol=0.05, rtol=0)
    torch.testing.assert_close(grid[..., 2], torch.ones(4, 4))
    assert resize_patch_features(feats, (h, w), (h, w)) is feats


def test_dino_head_unit_norm_prototypes_bound_logits_and_keep_the_layout():
    from training.heads import DINOHead

    torch.manual_seed(0)
    raw = DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16)
    normed = DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16, norm_last_layer=True)
    assert raw.state_dict().keys() == normed.state_dict().keys()
    normed.load_state_dict(raw.state_dict())
    x = torch.randn(8, 32)
    z = normed(x, no_last_layer=True)
    logits = normed(x)
    assert logits.abs().max() <= 1.0 + 1e-5  # cosines between unit bottleneck and unit prototypes
    w = torch.nn.functional.normalize(raw.last_layer.weight, dim=1)
    assert torch.allclose(logits, z @ w.T, atol=1e-6)
    assert torch.allclose(normed(z, only_last_layer=True), logits, atol=1e-6)

"""The box filter and the guided filter (heads.upsample) against per-pixel loops written from the
definitions (He, Sun, Tang, TPAMI 2013), in float64 on small random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.heads.upsample import box_mean, guided_filter


def _window(i: int, n: int, r: int) -> slice:
    return slice(max(0, i - r), min(n, i + r + 1))


def _naive_box(x: np.ndarray, r: int) -> np.ndarray:
    H, W = x.shape[-2:]
    out = np.empty_like(x)
    for y in range(H):
        for u in range(W):
            out[..., y, u] = x[..., _window(y, H, r), _window(u, W, r)].mean(axis=(-2, -1))
    return out


def _naive_coefficients(
    p: np.ndarray, guide: np.ndarray, r: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (a, b) of one image: p [C, H, W], guide [G, H, W] -> a [G, C, H, W], b [C, H, W]."""
    G, (C, H, W) = guide.shape[0], p.shape
    a, b = np.empty((G, C, H, W)), np.empty((C, H, W))
    for y in range(H):
        for u in range(W):
            wy, wx = _window(y, H, r), _window(u, W, r)
            Iw = guide[:, wy, wx].reshape(G, -1)
            pw = p[:, wy, wx].reshape(C, -1)
            mu, pm = Iw.mean(1), pw.mean(1)
            sigma = (Iw @ Iw.T) / Iw.shape[1] - np.outer(mu, mu)
            cov = (Iw @ pw.T) / Iw.shape[1] - np.outer(mu, pm)  # [G, C]
            ak = np.linalg.solve(sigma + eps * np.eye(G), cov)
            a[:, :, y, u] = ak
            b[:, y, u] = pm - ak.T @ mu
    return a, b


@pytest.mark.parametrize("r", [1, 2, 5, 40])
def test_box_mean_equals_clipped_window_means(r):
    x = np.random.default_rng(r).random((2, 3, 9, 13))
    got = box_mean(torch.from_numpy(x), r).numpy()
    np.testing.assert_allclose(got, _naive_box(x, r), rtol=1e-12, atol=1e-12)
    assert not np.allclose(got, x)  # control: the windows average


@pytest.mark.parametrize("G", [1, 3])
def test_guided_filter_coefficients_match_the_definition(G):
    rng = np.random.default_rng(G)
    C, H, W, r, eps = 3, 11, 14, 2, 1e-2
    p = rng.random((C, H, W))
    guide = rng.random((G, H, W))  # distinct channels: a slip between guide or label channels shows
    A, b = guided_filter(torch.from_numpy(p)[None], torch.from_numpy(guide)[None], r, eps)
    a_ref, b_ref = _naive_coefficients(p, guide, r, eps)
    np.testing.assert_allclose(A[0].numpy(), _naive_box(a_ref, r), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(b[0].numpy(), _naive_box(b_ref, r), rtol=1e-9, atol=1e-10)
    # control: the coefficients of another guide (channels reversed) are not these
    if G == 3:
        a_swapped, _ = _naive_coefficients(p, guide[::-1].copy(), r, eps)
        assert not np.allclose(A[0].numpy(), _naive_box(a_swapped, r), atol=1e-3)


def test_guided_filter_refuses_a_two_channel_guide():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        guided_filter(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), 1)


def test_guided_filter_launches_the_same_ops_for_more_channels():
    """The window means of one pass are one batched box filter: more channels, no more ops."""
    from torch.profiler import ProfilerActivity, profile

    def ops(C: int) -> list[str]:
        p, g = torch.rand(1, C, 24, 32), torch.rand(1, 3, 24, 32)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            guided_filter(p, g, 2)
        return [e.name for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]

    ops(2)  # the window areas of a size are made on its first call, then kept
    few, many = ops(2), ops(9)
    assert len(few) == len(many)
    assert few.count("aten::cumsum") == 4  # two box filters, one cumulative sum per axis each

"""TokenCut: planted objects, agreement with the reference scipy generalised solve, validation, video."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage

from dinov3_ros.heads.tokencut import TokenCutTracker, fiedler_vector, tokencut, tokencut_multi

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _planted(h, w, masks, C=64, noise=1.2, seed=0):
    """Background cluster + one cluster per object mask (unit-norm centres, Gaussian noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(masks) + 1, C))
    feats = centres[0] + noise * rng.standard_normal((h, w, C))
    for i, m in enumerate(masks, start=1):
        feats[m] = centres[i] + noise * rng.standard_normal((int(m.sum()), C))
    return feats.astype(np.float32)


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def _reference(feats: np.ndarray, tau=0.2, eps=1e-5, bug: str | None = None):
    """Independent transcription of the published TokenCut steps with scipy.linalg.eigh(D-W, D).

    ``bug`` plants a plausible mistake for the negative controls: ``"no_l2norm"`` (raw dot products),
    ``"standard_eig"`` (eigh(D-W) without D: the unnormalised cut), ``"soft_affinity"`` (W = cosine
    similarity instead of the thresholded 1/eps graph).
    """
    h, w, C = feats.shape
    F = feats.reshape(-1, C).astype(np.float64)
    if bug != "no_l2norm":
        F = F / np.linalg.norm(F, axis=1, keepdims=True)
    A = F @ F.T
    A = np.clip(A, eps, None) if bug == "soft_affinity" else np.where(A > tau, 1.0, eps)
    d = A.sum(1)
    D = np.diag(d)
    if bug == "standard_eig":
        _, vecs = scipy.linalg.eigh(D - A, subset_by_index=[1, 2])
        vecs = vecs / np.sqrt(np.sum(vecs**2 * d[:, None], 0))  # same x^T D x = 1 normalisation
    else:
        _, vecs = scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])
    v = vecs[:, 0].copy()
    bip = v > v.mean()
    seed = int(np.argmax(np.abs(v)))
    if not bip[seed]:
        v, bip = -v, ~bip
    lab, _ = ndimage.label(bip.reshape(h, w))
    comp = lab == lab[np.unravel_index(seed, (h, w))]
    return v.reshape(h, w), comp, np.unravel_index(seed, (h, w))


def test_planted_object_iou():
    h, w = 24, 32
    obj = _disk(h, w, 11, 19, 6) | _disk(h, w, 15, 13, 4)  # non-convex blob
    feats = _planted(h, w, [obj], noise=1.5)
    res = tokencut(feats)
    assert res.mask.dtype == bool and res.mask.shape == (h, w)
    assert _iou(res.mask, obj) >= 0.9
    ys, xs = np.nonzero(res.mask)
    assert res.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert res.mask[res.seed]
    assert res.eigenvector[res.seed] == np.abs(res.eigenvector).max()
    assert res.box_pixels(16, image_size=(380, 500))[2] <= 500


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["scipy", "cpu_dense", "dense", "arpack", "subspace", "auto"])
def test_agrees_with_scipy_generalised_solve(seed, method):
    h, w = 9, 11
    rng = np.random.default_rng(seed)
    masks = [_disk(h, w, rng.integers(2, 7), rng.integers(2, 9), 2.5)]
    feats = _planted(h, w, masks, C=48, noise=2.2, seed=seed)  # noisy: eigenvector has no ties
    v_ref, comp_ref, seed_ref = _reference(feats)
    res = tokencut(feats, method=method)
    # same eigenvector (normalised xᵀDx = 1 in both; sign fixed by the seed rule)
    np.testing.assert_allclose(res.eigenvector, v_ref, atol=1e-6)
    assert np.array_equal(res.mask, comp_ref)
    assert res.seed == tuple(int(i) for i in seed_ref)


@pytest.mark.parametrize("bug", ["no_l2norm", "standard_eig", "soft_affinity"])
def test_reference_agreement_catches_planted_bug(bug):
    """Negative control: a reference with a plausible TokenCut mistake fails the same comparison."""
    h, w = 9, 11
    rng = np.random.default_rng(0)
    feats = _planted(h, w, [_disk(h, w, rng.integers(2, 7), rng.integers(2, 9), 2.5)], C=48, noise=2.2)
    res = tokencut(feats, method="scipy")
    v_bug, comp_bug, _ = _reference(feats, bug=bug)
    v_ok, comp_ok, _ = _reference(feats)
    assert np.allclose(res.eigenvector, v_ok, atol=1e-6) and np.array_equal(res.mask, comp_ok)
    assert not (np.allclose(res.eigenvector, v_bug, atol=1e-6) and np.array_equal(res.mask, comp_bug))
    assert not np.allclose(res.eigenvector, v_bug, atol=1e-6)


def test_fiedler_vector_large_grid_solvers_agree():
    torch.manual_seed(0)
    h, w = 14, 20
    feats = _planted(h, w, [_disk(h, w, 5, 6, 3), _disk(h, w, 8, 15, 3)], C=32, noise=2.5, seed=5)
    F = feats.reshape(-1, 32)
    x_ref, lam_ref = fiedler_vector(F, method="scipy")
    for method in ("arpack", "subspace", "dense"):
        x, lam = fiedler_vector(torch.from_numpy(F), method=method)
        s = np.sign(x @ x_ref)
        np.testing.assert_allclose(s * x, x_ref, atol=1e-6)
        assert abs(lam - lam_ref) < 1e-9


def test_cls_and_register_tokens_are_refused():
    h, w, C = 6, 7, 16
    feats = np.random.default_rng(0).standard_normal((h, w, C)).astype(np.float32)
    tokens = feats.reshape(-1, C)
    # the patch tokens alone, with their grid, are accepted and equal the [h, w, C] call
    assert np.array_equal(tokencut(tokens, grid=(h, w)).mask, tokencut(feats).mask)
    cls_regs = np.random.default_rng(1).standard_normal((5, C)).astype(np.float32)
    with pytest.raises(ValueError, match="register"):
        tokencut(np.concatenate([cls_regs, tokens]), grid=(h, w))  # DINOv3: CLS + 4 registers
    with pytest.raises(ValueError, match="CLS"):
        tokencut(np.concatenate([cls_regs[:1], tokens]), grid=(h, w))  # DINO v1 style CLS only
    with pytest.raises(ValueError, match="grid"):
        tokencut(tokens)
    with pytest.raises(ValueError, match=r"\[h, w, C\]"):
        tokencut(feats[None])
    with pytest.raises(ValueError, match="NaN"):
        tokencut(np.full((h, w, C), np.nan, np.float32))
    with pytest.raises(ValueError, match="tau"):
        tokencut(feats, tau=1.5)


def test_multi_object_finds_both_planted_objects():
    h, w = 20, 28
    a, b = _disk(h, w, 6, 7, 4), _disk(h, w, 13, 20, 4)
    feats = _planted(h, w, [a, b], noise=1.5, seed=3)
    objs = tokencut_multi(feats, k=4)
    assert len(objs) >= 2
    found = [o.mask for o in objs[:2]]
    assert max(_iou(found[0], a), _iou(found[0], b)) >= 0.9
    assert max(_iou(found[1], a), _iou(found[1], b)) >= 0.9
    assert not np.logical_and(found[0], found[1]).any()
    assert np.isnan(objs[1].eigenvector[found[0]]).all()  # first object removed from the 2nd graph
    assert np.array_equal(objs[0].mask, tokencut(feats).mask)  # first cut == paper algorithm


def test_tracker_keeps_identity():
    h, w = 16, 20
    rng = np.random.default_rng(0)
    C = 48
    bg, oa, ob = rng.standard_normal((3, C))

    def frame(ca, cb=None):
        f = bg + 1.2 * rng.standard_normal((h, w, C))
        ma = _disk(h, w, *ca, 3)
        f[ma] = oa + 1.2 * rng.standard_normal((int(ma.sum()), C))
        if cb is not None:
            mb = _disk(h, w, *cb, 3)
            f[mb] = ob + 1.2 * rng.standard_normal((int(mb.sum()), C))
        return f.astype(np.float32)

    tr = TokenCutTracker(k=2, iou_threshold=0.3)
    t0 = tr.update(frame((6, 6)))
    assert len(t0) == 1
    ida = t0[0].track_id
    t1 = tr.update(frame((7, 7)))  # moved by one patch: same identity
    assert [t.track_id for t in t1] == [ida] and t1[0].hits == 2
    t2 = tr.update(frame((7, 8), (11, 15)))  # a second object appears: new identity
    ids = {t.track_id for t in t2}
    assert ida in ids and len(ids) == 2
    a_track = next(t for t in t2 if t.track_id == ida)
    assert _iou(a_track.result.mask, _disk(h, w, 7, 8, 3)) >= 0.7
    # feature-carried matching survives a jump larger than the object
    trf = TokenCutTracker(k=1, use_features=True)
    i0 = trf.update(frame((4, 4)))[0].track_id
    i1 = trf.update(frame((11, 15)))[0].track_id
    assert i0 == i1


@pytest.mark.parametrize("exact_later", [False, True])
def test_multi_graph_once_path_agrees(exact_later):
    """The accelerator path (graph built once, float32 later cuts; run here on CPU tensors) finds the
    same objects as the per-cut reference, and its first object is exactly :func:`tokencut`."""
    h, w = 20, 28
    a, b = _disk(h, w, 6, 7, 4), _disk(h, w, 13, 20, 4)
    feats = _planted(h, w, [a, b], noise=1.5, seed=3)
    ref = tokencut_multi(feats, k=4, method="subspace")
    fast = tokencut_multi(
        torch.from_numpy(feats), k=4, method="subspace", graph_once=True, exact_later=exact_later
    )
    assert len(fast) == len(ref) >= 2
    single = tokencut(feats, method="subspace")
    np.testing.assert_array_equal(fast[0].mask, single.mask)
    np.testing.assert_allclose(fast[0].eigenvector, single.eigenvector, atol=1e-7)
    for r, f in zip(ref, fast):
        np.testing.assert_array_equal(r.mask, f.mask)
        assert f.contrast == pytest.approx(r.contrast, rel=1e-6)
        assert f.eigenvalue == pytest.approx(r.eigenvalue, abs=1e-4)


def test_cpu_dense_solve_handles_degenerate_spectrum() -> None:
    """A graph without edges (every eigenvalue equal) takes the full solve's answer: no error."""
    from dinov3_ros.heads.tokencut import _solve_dense, _solve_dense_np

    W = np.full((24, 24), 1e-5)
    np.fill_diagonal(W, 1.0)
    x, lam = _solve_dense_np(W)
    _, lam_ref = _solve_dense(torch.from_numpy(W))
    assert x.shape == (24,) and np.isfinite(x).all() and lam == pytest.approx(lam_ref)


def test_seed_ties_resolve_to_the_first_patch_for_every_solver() -> None:
    """Two objects made of the same repeated token give equal |x| up to round-off: every solver takes
    the first of the tied patches as the seed, so all find the same object (not whichever object a
    solver's last bits favour)."""
    h, w = 12, 16
    a, b = _disk(h, w, 3, 4, 2), _disk(h, w, 8, 11, 2)
    feats = _planted(h, w, [], C=32, noise=1.0, seed=4)
    tok = np.random.default_rng(9).standard_normal(32).astype(np.float32) * 3
    feats[a | b] = tok  # both objects: one repeated token (a separate clique in the graph)
    masks = [tokencut(feats, method=m).mask for m in ("scipy", "cpu_dense", "dense", "arpack", "subspace")]
    for m in masks:  # (with a plain argmax, the five solvers pick seeds in a and in b)
        assert np.array_equal(m, masks[0])
    assert masks[0][a].all() and not masks[0][b].any(), "the seed must be the first tied patch, in a"


@pytest.mark.parametrize("squarings", [3, 5])
def test_masked_cut_refines_a_weak_filter(monkeypatch, squarings) -> None:
    """Few squarings leave the block unconverged: further checks, each after one more squaring of B,
    finish the solve (counted in CUT_STATS); with no further checks allowed the residual check fails
    and the dense fallback gives the same objects."""
    from dinov3_ros.heads import tokencut as tc

    h, w = 20, 28
    feats = _planted(h, w, [_disk(h, w, 6, 7, 4), _disk(h, w, 13, 20, 4)], noise=1.5, seed=3)
    ref = tokencut_multi(feats, k=3, method="scipy")
    monkeypatch.setattr(tc, "SQUARINGS", squarings)
    tc.CUT_STATS.reset()
    got = tokencut_multi(torch.from_numpy(feats), k=3, method="subspace", graph_once=True)
    assert tc.CUT_STATS.steps > 0 and tc.CUT_STATS.fallbacks == 0
    assert [r.mask.tolist() for r in got] == [r.mask.tolist() for r in ref]
    monkeypatch.setattr(tc, "MAX_STEPS", 0)
    tc.CUT_STATS.reset()
    got = tokencut_multi(torch.from_numpy(feats), k=3, method="subspace", graph_once=True)
    assert tc.CUT_STATS.fallbacks > 0
    assert [r.mask.tolist() for r in got] == [r.mask.tolist() for r in ref]


def _blobs(seed, h=20, w=28, C=32, nb=5, noise=1.6):
    """Several planted blobs of similar strength: later cuts have clustered eigenvalues."""
    rng = np.random.default_rng(seed)
    cs = rng.standard_normal((nb + 1, C))
    f = cs[0] + noise * rng.standard_normal((h, w, C))
    yy, xx = np.mgrid[0:h, 0:w]
    for b in range(nb):
        cy, cx = rng.integers(3, h - 3), rng.integers(3, w - 3)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 6
        f[m] = cs[b + 1] + noise * rng.standard_normal((int(m.sum()), C))
    return f.astype(np.float32)


def test_later_cuts_stop_only_on_a_certified_mask(monkeypatch) -> None:
    """Later cuts accept the float32 filter's eigenvector only when no eigenvector within its error bound
    gives another mask; here (clustered eigenvalues) accepting it unchecked changes an object, the
    certified path finds the reference's objects."""
    from dinov3_ros.heads import tokencut as tc

    F = _blobs(19)
    ref = tokencut_multi(F, k=4, tau=0.4, method="cpu_dense")
    got = tokencut_multi(torch.from_numpy(F), k=4, tau=0.4, graph_once=True, method="subspace")
    assert [r.mask.tolist() for r in got] == [r.mask.tolist() for r in ref]
    monkeypatch.setattr(tc, "_mask_certified", lambda *a, **k: True)  # negative control: no certificate
    lax = tokencut_multi(torch.from_numpy(F), k=4, tau=0.4, graph_once=True, method="subspace")
    assert [r.mask.tolist() for r in lax] != [r.mask.tolist() for r in ref]


@pytest.mark.parametrize("n, C, dtype", [(1, 8, np.float32), (37, 384, np.float32), (300, 64, np.float64)])
def test_cpu_gram_is_the_exact_symmetric_product(n, C, dtype):
    """The CPU affinity's product through scipy's BLAS (one thread pool with the eigen solve) is exactly
    symmetric, has the diagonal once (not twice), and equals ``A @ A.T`` to rounding."""
    from dinov3_ros.heads.tokencut import _gram

    A = np.ascontiguousarray(np.random.default_rng(n).standard_normal((n, C)).astype(dtype))
    S = _gram(A)
    assert S.dtype == dtype and np.array_equal(S, S.T)
    np.testing.assert_allclose(S, A @ A.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.diag(S), (A * A).sum(1), rtol=1e-5)

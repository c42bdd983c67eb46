"""Object evaluations: TokenCut mask IoU / CorLoc on the dominant object, and the object-class probe.

TokenCut runs on the last-layer output patch features (DINOv3 paper protocol, not attention keys)
through ``dinov3_ros.heads.tokencut.tokencut`` when that package provides it, otherwise through the
built-in reference implementation below (binary cosine graph with tau / eps, generalised eigenproblem,
Fiedler vector split at its mean, foreground = side with the largest |v|, connected component of the
seed). The patch mask is upsampled (nearest) to pixels; IoU is against the dominant object's mask
(largest visible instance); CorLoc counts the mask's box with IoU >= 0.5 against that object's box
(``corloc``) and against any visible object's box (``corloc_any``, LOST protocol).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dinov3_ros.eval.data import Crop, dominant_instance
from dinov3_ros.eval.metrics import (
    accuracy,
    corloc_hits,
    knn_predict,
    linear_probe_predict,
    mask_box,
    mask_iou,
    prior_chance,
    scene_bootstrap_ci,
    select_ridge_lambda,
)
from dinov3_ros.synthetic.frame import SynthFrame


def tokencut_builtin(features: np.ndarray, tau: float = 0.2, eps: float = 1e-5) -> np.ndarray:
    """Reference TokenCut on ``[h,w,C]`` patch features; returns the ``[h,w]`` bool object mask."""
    from scipy import ndimage
    from scipy.linalg import eigh

    h, w, C = features.shape
    f = features.reshape(-1, C).astype(np.float64)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    A = f @ f.T
    A = np.where(A > tau, 1.0, eps)
    d = A.sum(1)
    D = np.diag(d)
    _, vecs = eigh(D - A, D, subset_by_index=[1, 2])
    v = vecs[:, 0]
    part = v > v.mean()
    seed = int(np.argmax(np.abs(v)))
    if not part[seed]:
        part = ~part
    lab, _ = ndimage.label(part.reshape(h, w))
    return lab == lab.flat[seed]


def tokencut_mask(features: np.ndarray, tau: float = 0.2, eps: float = 1e-5) -> tuple[np.ndarray, str]:
    """``[h,w]`` object mask from the heads package if available (else built-in) and which one ran."""
    try:
        from dinov3_ros.heads.tokencut import tokencut
    except ImportError:
        return tokencut_builtin(features, tau, eps), "builtin"
    res = tokencut(features, tau=tau, eps=eps)
    mask = getattr(res, "mask", None)
    if mask is None:
        return tokencut_builtin(features, tau, eps), "builtin"
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask).astype(bool).squeeze()
    return mask, "heads.tokencut"


def upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest upsampling of a patch mask to the image size (pixel masks pass through)."""
    if mask.shape == (height, width):
        return mask
    h, w = mask.shape
    ys = np.minimum((np.arange(height) * h) // height, h - 1)
    xs = np.minimum((np.arange(width) * w) // width, w - 1)
    return mask[ys][:, xs]


def guided_mask(mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """A patch mask at image size with its edges moved to the image's, as the pipeline's
    ``mask_refine: guided`` does (``heads.mask_refine.refine_labels``; a mask the refinement would
    empty keeps its patch blocks)."""
    import cv2

    from dinov3_ros.heads.mask_refine import refine_labels

    H, W = rgb.shape[:2]
    fg = cv2.resize(np.asarray(mask, np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    blocks = upsample_mask(np.asarray(mask, bool), H, W).astype(np.uint16)
    return refine_labels(np.stack([1.0 - fg, fg], -1), rgb, H / mask.shape[0], blocks) == 1


def evaluate_tokencut(
    frames: Sequence[SynthFrame],
    segment: Callable[[int, SynthFrame], np.ndarray],
    min_fraction: float = 0.015,
) -> dict:
    """Mean IoU with the dominant object, CorLoc (its box) and CorLoc-any (any visible object's box:
    the published TokenCut/LOST protocol), with 95% scene-bootstrap intervals of each (``ci95``)."""
    ious, pred_boxes, dom_boxes, any_boxes, scenes = [], [], [], [], []
    for i, fr in enumerate(frames):
        inst = dominant_instance(fr, min_fraction)
        if inst is None:
            continue
        scenes.append(fr.scene_index)
        gt = fr.instances == inst
        m = upsample_mask(np.asarray(segment(i, fr), bool), fr.height, fr.width)
        ious.append(mask_iou(m, gt))
        pred_boxes.append(mask_box(m))
        dom_boxes.append([fr.instance_box(inst)])
        any_boxes.append([fr.instance_box(k) for k in fr.instance_areas()])
    if not ious:
        raise ValueError("no frame has a dominant object large enough for the TokenCut evaluation")
    hits, hits_any = corloc_hits(pred_boxes, dom_boxes), corloc_hits(pred_boxes, any_boxes)
    return {
        "iou": float(np.mean(ious)),
        "corloc": float(np.mean(hits)),
        "corloc_any": float(np.mean(hits_any)),
        "images": len(ious),
        "scenes": len(set(scenes)),
        "ci95": {
            "iou": scene_bootstrap_ci(ious, scenes),
            "corloc": scene_bootstrap_ci(hits, scenes),
            "corloc_any": scene_bootstrap_ci(hits_any, scenes),
        },
    }


def instance_features(frame: SynthFrame, patch_size: int) -> np.ndarray:
    """``[h, w, I]`` one-hot of each patch's majority instance (background 0 included): the features a
    perfect instance separator would give, on which TokenCut reaches its ceiling on these scenes."""
    p = int(patch_size)
    h, w = frame.height // p, frame.width // p
    inst = frame.instances[: h * p, : w * p].astype(np.int64)
    n = int(inst.max()) + 1
    blocks = inst.reshape(h, p, w, p).transpose(0, 2, 1, 3).reshape(h, w, p * p)
    counts = np.stack([(blocks == k).sum(-1) for k in range(n)], -1)
    return np.eye(n, dtype=np.float32)[counts.argmax(-1)]


def evaluate_probe(
    train: Sequence[Crop],
    test: Sequence[Crop],
    embed: Callable[[Sequence[Crop]], np.ndarray],
    num_classes: int,
    k: int = 20,
) -> dict:
    """k-NN (cosine, k=20, T=0.07), 1-NN and ridge linear probe accuracy on instance crops (the ridge
    strength chosen by cross-validation on the training crops), with chance levels and 95% scene-bootstrap
    intervals (``ci95``). ``embed(crops) ->
    [N, D]`` features."""
    if not train or not test:
        raise ValueError("the class probe needs training and test crops")
    seen = {c.label for c in train}
    n_all = len(test)
    test = [c for c in test if c.label in seen]  # a probe cannot predict classes it never saw
    if not test:
        raise ValueError("no test crop has a class present in the training crops")
    ytr = np.array([c.label for c in train])
    yte = np.array([c.label for c in test])
    xtr = np.asarray(embed(train))
    xte = np.asarray(embed(test))
    knn = knn_predict(xtr, ytr, xte, k=k, num_classes=num_classes)
    lam = select_ridge_lambda(xtr, ytr, num_classes)
    lin = linear_probe_predict(xtr, ytr, xte, num_classes, lam)
    knn1 = knn_predict(xtr, ytr, xte, k=1, num_classes=num_classes)
    scenes = [c.scene_index for c in test]
    return {
        "knn_acc": accuracy(knn, yte),
        "knn1_acc": accuracy(knn1, yte),
        "linear_acc": accuracy(lin, yte),
        "linear_lambda": lam,
        "chance_uniform": 1.0 / num_classes,
        "chance_prior": prior_chance(ytr, yte, num_classes),
        "chance_majority": float(np.bincount(yte, minlength=num_classes).max() / len(yte)),
        "train_crops": len(train),
        "test_crops": len(test),
        "test_crops_unseen_class": n_all - len(test),
        "ci95": {
            "knn_acc": scene_bootstrap_ci(knn == yte, scenes),
            "linear_acc": scene_bootstrap_ci(lin == yte, scenes),
        },
    }

"""Run every evaluation for one feature model (or the ground-truth oracle) on one data set."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from dinov3_ros.core.config import PipelineConfig
from dinov3_ros.eval.data import EvalData, dominant_instance, instance_crops
from dinov3_ros.eval.depth import DepthProbe, evaluate_depth
from dinov3_ros.eval.features import FeatureModel
from dinov3_ros.eval.matching import (
    evaluate_matching,
    heads_match,
    match_features,
    oracle_matcher,
    source_pixels,
)
from dinov3_ros.eval.objects import (
    evaluate_probe,
    evaluate_tokencut,
    guided_mask,
    instance_features,
    tokencut_mask,
)

TASKS = ("depth", "correspondence", "tokencut", "probe")
ORACLE = "oracle"
#: correspondence matchers: the pipeline's (features + image refinement), features only, the pipeline's
#: inliers, dense NN
MATCHERS = ("heads", "heads-features", "heads-inliers", "dense")


@dataclass
class EvalOptions:
    """Knobs of the evaluation protocol (defaults documented in each task module)."""

    tasks: tuple[str, ...] = TASKS
    tau: float = 0.2
    eps: float = 1e-5
    n_sources: int = 2000
    keep: int = 1000
    ransac_px: float = 2.0
    matcher: str = "heads"  # one of MATCHERS (see eval.matching)
    match_unrefined: str | None = None  # heads matchers: keep | drop; None = the pipeline's default
    crop_size: int = 224  # class-probe crops at the backbones' training / linear-probe resolution
    knn_k: int = 20
    depth_head: str | None = None
    objects_head: str | None = None  # TokenCut on this objects head's projection of the tokens
    mask_refine: str = "none"  # "guided": mask edges moved to the image's (the pipeline's default)
    seed: int = 0
    device: str = "cpu"
    extra: dict = field(default_factory=dict)


def _check_tasks(tasks) -> None:
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; known: {', '.join(TASKS)}")


@dataclass
class _Run:
    """One evaluation in progress: its inputs, the shared test/train features and what it has produced."""

    model: FeatureModel | None  # None for the ground-truth oracle
    data: EvalData
    opts: EvalOptions
    res: dict
    ex: dict
    f_test: np.ndarray | None = None
    f_train: np.ndarray | None = None

    @property
    def oracle(self) -> bool:
        return self.model is None


def evaluate(model: FeatureModel | str, data: EvalData, opts: EvalOptions | None = None) -> tuple[dict, dict]:
    """Return ``(results, examples)``: JSON-able metrics per task, and arrays for the report."""
    opts = opts or EvalOptions()
    _check_tasks(opts.tasks)
    oracle = isinstance(model, str) and model == ORACLE
    if isinstance(model, str) and not oracle:
        raise ValueError(f"model must be a FeatureModel or {ORACLE!r}, got {model!r}")
    res: dict = {
        "model": ORACLE if oracle else model.name,
        "data": data.source,
        "data_meta": data.meta,
        "train_frames": len(data.train),
        "test_frames": len(data.test),
        "options": {k: v for k, v in asdict(opts).items() if k != "extra"},
        "timing_s": {},
    }
    run = _Run(None if oracle else model, data, opts, res, {"frame": data.test[0]})
    if not oracle:
        _features(run)
    for task, fn in (
        ("depth", _depth),
        ("correspondence", _correspondence),
        ("tokencut", _tokencut),
        ("probe", _probe),
    ):
        if task in opts.tasks:
            t0 = time.perf_counter()
            fn(run)
            res["timing_s"][task] = time.perf_counter() - t0
    res["summary"] = summary(res)
    res["summary_ci95"] = summary_ci95(res)
    return res, run.ex


def _features(run: _Run) -> None:
    """Patch features of the test frames (and of the training frames when the depth probe needs them)."""
    data, opts, res = run.data, run.opts, run.res
    t0 = time.perf_counter()
    run.f_test, _ = run.model(np.stack([f.rgb for f in data.test]))
    if "depth" in opts.tasks and opts.depth_head is None:
        run.f_train, _ = run.model(np.stack([f.rgb for f in data.train]))
    res["timing_s"]["features"] = time.perf_counter() - t0
    res["feature_dim"] = int(run.f_test.shape[-1])
    res["patch_grid"] = list(run.f_test.shape[1:3])


def _depth_predictor(run: _Run):
    """``pred(i, frame) -> depth`` for the configured method; records the method in the results."""
    data, opts, res, model, f_test = run.data, run.opts, run.res, run.model, run.f_test
    if run.oracle:

        def pred(i, fr):
            return np.where(fr.depth > 0, fr.depth, 1.0)

        res["depth_method"] = "ground truth"
    elif opts.depth_head:
        if not hasattr(model, "depth_with_head"):
            raise ValueError("--depth-head needs a real backbone (--weights default | random:ARCH | PATH)")
        head_depth = model.depth_with_head(np.stack([f.rgb for f in data.test]), opts.depth_head)

        def pred(i, fr):
            return head_depth[i]

        res["depth_method"] = f"head:{opts.depth_head}"
    else:
        probe = DepthProbe().fit(list(run.f_train), data.train)

        def pred(i, fr):
            return probe.predict(f_test[i], fr.height, fr.width)

        res["depth_method"] = "ridge probe on log depth (frozen patch features)"
    return pred


def _depth(run: _Run) -> None:
    data, res = run.data, run.res
    pred = _depth_predictor(run)
    res["depth"] = evaluate_depth(data.test, pred)
    # reference: one constant depth everywhere (the training frames' median), what a content-blind
    # predictor achieves
    const = float(np.median(np.concatenate([f.depth[f.depth > 0] for f in data.train])))
    res["depth"]["const_baseline"] = evaluate_depth(data.test, lambda i, fr: np.full(fr.depth.shape, const))
    run.ex["depth_pred"] = pred(0, data.test[0])


def _feature_matcher(run: _Run):
    """``matcher(a, b, src) -> (pa, pb)`` on the test frames' features."""
    opts, f_test = run.opts, run.f_test
    if opts.matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {', '.join(MATCHERS)}, got {opts.matcher!r}")
    key = {(f.scene_index, f.frame_index): i for i, f in enumerate(run.data.test)}
    with_images = opts.matcher in ("heads", "heads-inliers")  # the pipeline's matcher, as the node runs it
    unrefined = opts.match_unrefined or PipelineConfig().match_unrefined

    def matcher(a, b, src):
        fa = f_test[key[(a.scene_index, a.frame_index)]]
        fb = f_test[key[(b.scene_index, b.frame_index)]]
        p = a.height // fa.shape[0]
        if with_images:
            inl = opts.matcher == "heads-inliers"
            return heads_match(fa, fb, p, a.rgb, b.rgb, inliers_only=inl, unrefined=unrefined)
        if opts.matcher == "heads-features":
            return heads_match(fa, fb, p)
        return match_features(fa, fb, src, (a.height, a.width), opts.keep)

    run.res["matcher"] = opts.matcher
    if with_images:
        run.res["match_unrefined"] = unrefined
    return matcher


def _correspondence(run: _Run) -> None:
    data, opts, res = run.data, run.opts, run.res
    matcher = oracle_matcher if run.oracle else _feature_matcher(run)
    pairs = data.pairs()
    res["correspondence"] = evaluate_matching(pairs, matcher, opts.n_sources, opts.seed, opts.ransac_px)
    if pairs:
        a, b = pairs[0]
        src = source_pixels(a, b, 200, np.random.default_rng(opts.seed))
        pa, pb = matcher(a, b, src)
        pick = np.unique(np.linspace(0, max(len(pa) - 1, 0), min(len(pa), 60)).astype(int))
        run.ex["pair"] = (a, b, pa[pick], pb[pick])


def _tokencut(run: _Run) -> None:
    opts, f_test = run.opts, run.f_test
    used = set()
    if run.oracle:

        def segment(i, fr):
            inst = dominant_instance(fr, 0.0)
            return fr.instances == inst

        used.add("ground truth")
    else:
        if opts.objects_head:
            from dinov3_ros.heads.objects_head import load_objects_head

            head = load_objects_head(opts.objects_head, expect_embed_dim=int(f_test.shape[-1]))
            f_test = head.apply_numpy(f_test)

        def segment(i, fr):
            m, how = tokencut_mask(f_test[i], opts.tau, opts.eps)
            used.add(how)
            return guided_mask(m, fr.rgb) if opts.mask_refine == "guided" else m

    run.res["tokencut"] = evaluate_tokencut(run.data.test, segment)
    run.res["tokencut"]["implementation"] = sorted(used)
    run.res["tokencut"]["objects_head"] = opts.objects_head or "none"
    run.res["tokencut"]["mask_refine"] = opts.mask_refine
    p = 16 if run.oracle else run.data.test[0].height // f_test.shape[1]
    run.res["tokencut"]["instance_features"] = _tokencut_ceiling(run.data, p, opts.tau, opts.eps)
    run.ex["mask"] = segment(0, run.data.test[0])


def _tokencut_ceiling(data: EvalData, patch: int, tau: float, eps: float) -> dict[str, float]:
    """TokenCut on perfect per-patch instance features (patch-quantised masks, and the cut may pick
    another object than the largest): the same for every model, so computed once per data set."""
    key = ("tokencut_ceiling", patch, tau, eps)
    if key not in data.cache:
        res = evaluate_tokencut(
            data.test, lambda i, fr: tokencut_mask(instance_features(fr, patch), tau, eps)[0]
        )
        data.cache[key] = {k: res[k] for k in ("iou", "corloc", "corloc_any")}
    return dict(data.cache[key])


def _probe(run: _Run) -> None:
    data, opts, model = run.data, run.opts, run.model
    C = len(data.class_names)
    tr = instance_crops(data.probe_train or data.train, opts.crop_size)
    te = instance_crops(data.probe_test or data.test, opts.crop_size)
    if run.oracle:

        def embed(crops):
            return np.eye(C)[[c.label for c in crops]]  # one-hot of the true class
    else:

        def embed(crops):
            images = np.stack([c.image for c in crops])
            out = []
            for i in range(0, len(images), 64):
                pt, cls = model(images[i : i + 64])
                out.append(np.concatenate([cls, pt.mean((1, 2))], 1))
            return np.concatenate(out)

    run.res["probe"] = evaluate_probe(tr, te, embed, C, k=opts.knn_k)


def summary(res: dict) -> dict[str, float]:
    """The headline numbers (flat)."""
    out: dict[str, float] = {}
    if "depth" in res:
        for k in ("abs_rel", "rmse", "delta1"):
            out[f"depth.{k}"] = res["depth"][k]
    if "correspondence" in res:
        c = res["correspondence"]
        for k in ("recall@1px", "recall@2px", "recall@4px", "rot_err_deg_median", "trans_err_deg_median"):
            out[f"corr.{k}"] = c[k]
    if "tokencut" in res:
        out["tokencut.iou"] = res["tokencut"]["iou"]
        out["tokencut.corloc"] = res["tokencut"]["corloc"]
        out["tokencut.corloc_any"] = res["tokencut"]["corloc_any"]
    if "probe" in res:
        out["probe.knn_acc"] = res["probe"]["knn_acc"]
        out["probe.linear_acc"] = res["probe"]["linear_acc"]
    return out


#: prefix of a summary key -> the task whose ``ci95`` holds its interval
_SUMMARY_TASK = {"depth": "depth", "corr": "correspondence", "tokencut": "tokencut", "probe": "probe"}


def summary_ci95(res: dict) -> dict[str, list[float]]:
    """95% scene-bootstrap intervals of the headline numbers that have one (keys as :func:`summary`)."""
    out = {}
    for key in res["summary"]:
        prefix, k = key.split(".", 1)
        ci = res[_SUMMARY_TASK[prefix]].get("ci95", {}).get(k)
        if ci is not None:
            out[key] = ci
    return out

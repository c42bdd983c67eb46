"""Multi-student distillation (training.distill) and head-free distillation (training.feature_distill).

A tiny "trained-like" teacher (2-block ViT-Ti/16 with LayerScale 1 and spread prototypes, so its
features and Sinkhorn targets vary between images) teaches two students at once: a narrow 2-block ViT
and a small ConvNeXt (stride 32, so its patch grid is resampled to the teacher's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from training.distill import Batch, DistillConfig, Distiller, Teacher, load_teacher
from training.feature_distill import align_patch_tokens, feature_distill_loss, patch_grid

VIT_S = {"depth": 2, "embed_dim": 96, "num_heads": 2, "ffn_hidden": 192, "rope_rescale": None}
CNX_S = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 96]}
TEACHER_KW = {"depth": 2, "rope_rescale": None}
B, G, L, NL = 4, 64, 32, 2


def _students() -> list[dict]:
    return [
        {"name": "vit", "arch": "vitt16", "overrides": VIT_S},
        {"name": "cnx", "arch": "convnext_tiny", "overrides": CNX_S},
    ]


def _teacher_backbone():
    from dinov3_ros.models import build_backbone

    torch.manual_seed(1)
    tb = build_backbone("vitt16", **TEACHER_KW)
    with torch.no_grad():
        for n, p in tb.named_parameters():
            if n.endswith("gamma"):
                p.fill_(1.0)  # an untrained ViT (LayerScale 1e-5) maps every image to ~the same tokens
    return tb


def _teacher_file(path) -> str:
    from training.heads import DINOHead

    tb = _teacher_backbone()
    heads = {}
    for name in ("dino_head", "ibot_head"):
        h = DINOHead(192, 128, hidden_dim=64, bottleneck_dim=32)
        torch.nn.init.normal_(h.last_layer.weight, std=1.0)  # peaked prototype assignments
        heads[name] = h
    sd = {f"backbone.{k}": v for k, v in tb.state_dict().items()}
    for name, h in heads.items():
        sd.update({f"{name}.{k}": v for k, v in h.state_dict().items()})
    p = str(path / "teacher.pth")
    torch.save({"teacher": sd, "arch": "vitt16", "backbone_overrides": TEACHER_KW}, p)
    return p


def _batches(n: int, seed: int = 0) -> list[Batch]:
    """Structured images (smooth colour layouts, a flipped second crop) and block masks."""
    from training.data import sample_masks

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        base = F.interpolate(3 * torch.randn(B, 3, 3, 3, generator=g), size=G, mode="bilinear")
        gc = torch.cat([base, base.flip(-1)]) + 0.3 * torch.randn(2 * B, 3, G, G, generator=g)
        lc = F.interpolate(torch.cat([base[:, :, :40, :40], base[:, :, 24:, 24:]]), size=L, mode="bilinear")
        out.append(Batch(gc, lc, sample_masks(2 * B, (G // 16, G // 16), g, 0.5, (0.1, 0.5)), 2))
    return out


def _cfg(tmp_path, mode="heads", **train) -> DistillConfig:
    return DistillConfig.from_dict(
        {
            "output_dir": str(tmp_path / f"out_{mode}"),
            "mode": mode,
            "students": _students(),
            "optim": {"lr": 2e-3, "warmup_iters": 2, "layer_decay": 1.0},
            "train": {"iterations": 12, **train},
        }
    )


class _CountingForward:
    """Wraps the real ``forward_features`` of the teacher backbone and counts its calls."""

    def __init__(self, module):
        self.fn, self.calls = module.forward_features, 0
        module.forward_features = self

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


def _first_last(history: list[dict], name: str, key: str, k: int = 3) -> tuple[float, float]:
    vals = [h[name][key] for h in history]
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


def test_two_students_share_one_teacher_pass_and_losses_decrease(tmp_path):
    torch.set_num_threads(1)
    teacher = load_teacher(_teacher_file(tmp_path))
    counter = _CountingForward(teacher.backbone)
    d = Distiller(_cfg(tmp_path), teacher)
    assert set(d.students) == {"vit", "cnx"}
    before = {n: [p.detach().clone() for p in s.backbone.parameters()] for n, s in d.students.items()}
    batches = _batches(2)
    hist = [d.step(batches[i % 2]) for i in range(12)]
    # one teacher pass per step feeds both students
    assert counter.calls == 12 and d.teacher_forwards == 12
    for name in ("vit", "cnx"):
        for key in ("loss", "dino_global", "ibot"):
            first, last = _first_last(hist, name, key)
            assert last < first, (name, key, first, last)
        after = list(d.students[name].backbone.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before[name], after))
        # the EMA moved too, but lags the student
        ema = list(d.emas[name].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before[name], ema))
    # students were built with drop-path 0 (published), their heads from scratch
    assert d.students["vit"].backbone.drop_path_rate == 0.0
    assert not torch.equal(
        d.students["vit"].objective["dino_head"].last_layer.weight, teacher.dino_head.last_layer.weight[:, :]
    )


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    path = _teacher_file(tmp_path)
    batches = _batches(4)

    torch.manual_seed(0)
    ref = Distiller(_cfg(tmp_path / "a"), load_teacher(path))
    for b in batches:
        ref.step(b)
    rng_ref = torch.get_rng_state()

    torch.manual_seed(0)
    d1 = Distiller(_cfg(tmp_path / "b"), load_teacher(path))
    for b in batches[:2]:
        d1.step(b)
    d1.save_checkpoint()
    torch.manual_seed(123)  # the checkpoint restores the RNG state
    d2 = Distiller(_cfg(tmp_path / "b"), load_teacher(path))
    assert d2.load_checkpoint() and d2.iteration == 2 and d2.teacher_forwards == 2
    for b in batches[2:]:
        d2.step(b)
    # bit for bit: students (backbone + heads), EMAs, optimizer states, counters and the RNG stream
    assert (d2.iteration, d2.teacher_forwards) == (ref.iteration, ref.teacher_forwards) == (4, 4)
    for name in ("vit", "cnx"):
        _assert_same_state(ref.students[name].state_dict(), d2.students[name].state_dict(), f"{name} student")
        _assert_same_state(ref.emas[name].state_dict(), d2.emas[name].state_dict(), f"{name} ema")
        _assert_same_state(ref.optims[name].state_dict(), d2.optims[name].state_dict(), f"{name} optimizer")
    assert torch.equal(torch.get_rng_state(), rng_ref)  # the resumed run drew the same random numbers
    # negative control: one more step on the reference breaks the equality
    ref.step(batches[0])
    with pytest.raises(AssertionError):
        _assert_same_state(ref.students["vit"].state_dict(), d2.students["vit"].state_dict(), "vit")


def _assert_same_state(a, b, what: str) -> None:
    """Nested dicts/lists of tensors and numbers equal exactly (``torch.equal``, same keys, same types)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), what
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (what, list(a)[:5], list(b)[:5])
        for k in a:
            _assert_same_state(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{what}[{i}]")
    else:
        assert a == b, (what, a, b)


def test_export_round_trips_through_load_backbone_and_onnx(tmp_path):
    from dinov3_ros.models.loading import load_backbone

    torch.set_num_threads(1)
    d = Distiller(_cfg(tmp_path), load_teacher(_teacher_file(tmp_path)))
    for b in _batches(2):
        d.step(b)
    files = d.export(fp16=True)
    meta = json.loads((d.student_dir("vit") / "export.json").read_text())
    assert meta["arch"] == "vitt16" and meta["files"]["ema_fp16"] == "backbone_ema_fp16.pth"
    x = torch.randn(2, 3, 64, 64)
    for name, arch, kw in (("vit", "vitt16", VIT_S), ("cnx", "convnext_tiny", CNX_S)):
        sd = torch.load(files[name]["ema"], map_location="cpu", weights_only=True)
        assert set(sd) == set(d.emas[name].state_dict())  # official key layout, plain state_dict
        loaded = load_backbone(files[name]["ema"], arch, **kw)
        want = d.emas[name].eval().forward_features(x)["x_norm_patchtokens"]
        got = loaded.forward_features(x)["x_norm_patchtokens"]
        assert torch.allclose(want, got, atol=1e-5)
        half = torch.load(files[name]["ema_fp16"], map_location="cpu", weights_only=True)
        assert all(v.dtype == torch.float16 for v in half.values() if v.is_floating_point())
        loaded16 = load_backbone(files[name]["ema_fp16"], arch, **kw)
        got16 = loaded16.forward_features(x)["x_norm_patchtokens"]
        assert F.cosine_similarity(got16.flatten(), want.flatten(), dim=0) > 0.999
    import onnxruntime as ort

    from dinov3_ros.runtime.export import export_onnx

    vit = load_backbone(files["vit"]["ema"], "vitt16", **VIT_S)
    onnx_path, _findings = export_onnx(vit, tmp_path / "student.onnx", resolution=(64, 64), check=False)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {inp: x[:1].numpy()})))
    cls = torch.from_numpy(outs["cls"]).reshape(1, -1)
    assert torch.allclose(cls, vit.forward_features(x[:1])["x_norm_clstoken"], atol=1e-4)


def test_head_free_distillation_losses_decrease(tmp_path):
    torch.set_num_threads(1)
    teacher = Teacher(backbone=_teacher_backbone().eval().requires_grad_(False), arch="vitt16")
    cfg = _cfg(tmp_path, mode="features")
    d = Distiller(cfg, teacher)
    assert "projector" in d.students["cnx"].objective
    batches = _batches(2)
    hist = [d.step(batches[i % 2]) for i in range(10)]
    assert d.teacher_forwards == 10
    for name in ("vit", "cnx"):
        for key in ("loss", "cls_cos", "patch_cos"):
            first, last = _first_last(hist, name, key)
            assert last < 0.8 * first, (name, key, first, last)
        assert "gram" in hist[0][name]


def test_mode_heads_rejects_backbone_only_teacher(tmp_path):
    p = tmp_path / "bb.pth"
    torch.save(_teacher_backbone().state_dict(), p)
    with pytest.raises(ValueError, match="backbone-only"):
        load_teacher(p, "vitt16", overrides=TEACHER_KW)
    t = load_teacher(p, "vitt16", need_heads=False, overrides=TEACHER_KW)
    assert t.dino_head is None and not any(q.requires_grad for q in t.backbone.parameters())


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="students"):
        DistillConfig.from_dict({"output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown config key"):
        DistillConfig.from_dict({"students": _students(), "optim": {"lrr": 1}})
    with pytest.raises(ValueError, match="unique"):
        DistillConfig.from_dict({"students": [_students()[0], _students()[0]]})
    cfg = DistillConfig.from_dict({"students": _students()}, ["optim.lr=0.01", "mode=features"])
    assert cfg.raw["optim"]["lr"] == 0.01 and cfg.mode == "features"


def test_init_from_teacher_copies_backbone_and_heads_and_refuses_other_shapes(tmp_path):
    torch.set_num_threads(1)
    teacher = load_teacher(_teacher_file(tmp_path))
    same = {"name": "s", "arch": "vitt16", "overrides": TEACHER_KW, "init_from_teacher": True}
    optim = {"lr": 2e-3, "warmup_iters": 0}
    cfg = DistillConfig.from_dict({"output_dir": str(tmp_path / "o"), "students": [same], "optim": optim})
    d = Distiller(cfg, teacher)
    st, ema = d.students["s"], d.emas["s"]
    for mine, theirs in ((st.backbone, teacher.backbone), (ema, teacher.backbone)):
        for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), k
    for name in ("dino_head", "ibot_head"):
        for k, v in getattr(teacher, name).state_dict().items():
            assert torch.equal(st.objective[name].state_dict()[k], v), (name, k)
    # a copy, not shared storage: training the student leaves the frozen teacher as it was
    ref = [p.detach().clone() for p in teacher.backbone.parameters()]
    d.step(_batches(1)[0])
    assert all(torch.equal(a, b) for a, b in zip(ref, teacher.backbone.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(ref, st.backbone.parameters()))
    # negative control: without the flag the student starts elsewhere
    cfg0 = DistillConfig.from_dict(
        {"output_dir": str(tmp_path / "p"), "students": [{**same, "init_from_teacher": False}]}
    )
    d0 = Distiller(cfg0, load_teacher(_teacher_file(tmp_path)))
    w0, wt = d0.students["s"].backbone.patch_embed.proj.weight, teacher.backbone.patch_embed.proj.weight
    assert not torch.equal(w0, wt)
    narrow = {"name": "n", "arch": "vitt16", "overrides": VIT_S, "init_from_teacher": True}
    with pytest.raises(ValueError, match="init_from_teacher needs the teacher's backbone shape"):
        Distiller(DistillConfig.from_dict({"output_dir": str(tmp_path / "q"), "students": [narrow]}), teacher)
    with pytest.raises(ValueError, match="unknown key"):
        DistillConfig.from_dict({"students": [{**same, "init_form_teacher": True}]})


def test_shipped_configs_parse():
    from training.depth_head import load_config as depth_config
    from training.distill import load_config

    root = Path(__file__).resolve().parent.parent / "training" / "configs"
    for p in sorted(root.glob("distill_*.yaml")):
        cfg = DistillConfig.from_dict(load_config(p))
        assert cfg.students, p
    for p in sorted(root.glob("depth_*.yaml")):
        assert depth_config(p)["head"]["type"] in ("linear", "dpt"), p


def test_patch_grid_alignment():
    assert patch_grid(16, (64, 64)) == (4, 4)
    assert patch_grid(4, (64, 64)) == (2, 2)  # ConvNeXt stride 32
    assert patch_grid(12, (48, 64)) == (3, 4)
    with pytest.raises(ValueError):
        patch_grid(7, (64, 64))
    x = torch.randn(2, 6, 5)
    assert align_patch_tokens(x, (2, 3), (2, 3)) is x
    const = torch.ones(1, 4, 3) * torch.tensor([1.0, -2.0, 3.0])
    for mode in ("bilinear", "bicubic"):
        up = align_patch_tokens(const, (2, 2), (4, 4), mode)
        assert up.shape == (1, 16, 3) and torch.allclose(
            up, torch.ones(1, 16, 3) * torch.tensor([1.0, -2.0, 3.0])
        )
    # the Gram term compares raw student tokens of any width with the teacher's
    s, t = torch.randn(2, 16, 8), torch.randn(2, 16, 24)
    from training.feature_distill import FeatureDistillConfig, TeacherFeatures

    cfg = FeatureDistillConfig(cls_cos=0, patch_cos=0, gram=1.0)
    tf = TeacherFeatures(cls=torch.randn(2, 24), patch=t, grid=(4, 4))
    got = feature_distill_loss(torch.randn(2, 8), s, torch.randn(2, 24), torch.randn(2, 16, 24), tf, cfg)[
        "gram"
    ]
    gs = F.normalize(s, dim=-1) @ F.normalize(s, dim=-1).transpose(1, 2)
    gt = F.normalize(t, dim=-1) @ F.normalize(t, dim=-1).transpose(1, 2)
    assert torch.allclose(got, ((gs - gt) ** 2).mean(), atol=1e-6)


@pytest.mark.slow
def test_cli_chain_from_a_real_pretraining_run(tmp_path):
    """`dinov3-train pretrain` (2 iterations) -> `dinov3-train distill` in two resumable chunks."""
    from training import cli

    pre = tmp_path / "pre"
    assert (
        cli.main(
            [
                "pretrain",
                "--config",
                "training/configs/tiny_cpu.yaml",
                "--output-dir",
                str(pre),
                "train.iterations=2",
                "train.checkpoint_period=2",
                "train.batch_size_per_gpu=4",
            ]
        )
        == 0
    )
    t = load_teacher(pre)  # the EMA teacher with its DINO and iBOT heads from the DCP checkpoint
    assert t.dino_head is not None and t.dino_head.last_layer.weight.shape == (256, 64)
    cfg_path = tmp_path / "distill.yaml"
    cfg_path.write_text(
        json.dumps(
            {
                "output_dir": str(tmp_path / "dist"),
                "teacher": {"checkpoint": str(pre)},
                "students": _students(),
                "crops": {"global_crops_size": 64, "local_crops_size": 32, "local_crops_number": 2},
                "data": {"sources": [{"type": "procedural", "height": 96, "width": 96}], "num_workers": 0},
                "train": {"iterations": 3, "batch_size_per_gpu": 4, "checkpoint_period": 1},
            }
        )
    )
    args = ["distill", "--config", str(cfg_path), "--device", "cpu"]
    assert cli.main([*args, "--max-steps", "2"]) == 0
    ck = torch.load(tmp_path / "dist/students/vit/checkpoint.pt", weights_only=False)
    assert ck["iteration"] == 2 and not (tmp_path / "dist/students/vit/backbone_ema.pth").exists()
    assert cli.main(args) == 0
    for name in ("vit", "cnx"):
        meta = json.loads((tmp_path / f"dist/students/{name}/export.json").read_text())
        assert meta["iteration"] == 3
        assert (tmp_path / f"dist/students/{name}/backbone_ema_fp16.pth").is_file()


# ------------------------------------------------------------------ two processes (gloo)

DIST_STEPS = 2


def _rank_slice(b: Batch, rank: int, world: int) -> Batch:
    """This rank's images of a crop-major global batch (and their masks)."""
    n = b.batch_size // world

    def cut(x, n_crops):
        x = x.reshape(n_crops, -1, *x.shape[1:])[:, rank * n : (rank + 1) * n]
        return x.reshape(-1, *x.shape[2:])

    return Batch(cut(b.global_crops, 2), cut(b.local_crops, b.n_local), cut(b.masks, 2), 2)


def _worker(rank: int, world: int, init: str, tmp: str, teacher_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        d = Distiller(_cfg(Path(tmp)), load_teacher(teacher_path))
        assert list(d.students) == [["vit", "cnx"][rank]]  # one student per subgroup
        for b in _batches(DIST_STEPS):
            d.step(_rank_slice(b, rank, world))
        name = next(iter(d.students))
        torch.save(
            {"student": d.students[name].state_dict(), "forwards": d.teacher_forwards},
            os.path.join(tmp, f"{name}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_subgroups_match_single_process(tmp_path):
    teacher_path = _teacher_file(tmp_path)
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path), teacher_path), nprocs=2, join=True)
    torch.manual_seed(0)
    ref = Distiller(_cfg(tmp_path), load_teacher(teacher_path))
    for b in _batches(DIST_STEPS):
        ref.step(b)
    for name in ("vit", "cnx"):
        got = torch.load(tmp_path / f"{name}.pt", weights_only=False)
        assert got["forwards"] == DIST_STEPS
        for k, v in ref.students[name].state_dict().items():
            assert torch.allclose(v, got["student"][k], atol=2e-5), (name, k)


def _distance_to_teacher(d: Distiller, name: str, images: torch.Tensor) -> dict[str, float]:
    """1 - cosine between the student's (projected) and the teacher's CLS and patch tokens."""
    from training.feature_distill import TeacherFeatures

    st, t = d.students[name], d.teacher
    with torch.no_grad():
        out = t.backbone.forward_features(images)
        patch = out["x_norm_patchtokens"]
        target = TeacherFeatures(
            cls=out["x_norm_clstoken"], patch=patch, grid=patch_grid(patch.shape[1], images.shape[-2:])
        )
        terms = st.objective["projector"](st.backbone, images, target)
    return {k: float(terms[k]) for k in ("cls_cos", "patch_cos")}


def test_distillation_moves_the_student_towards_the_teacher(tmp_path):
    """On held-out images (never trained on) the student's tokens approach the teacher's; with a zero
    learning rate (the control) nothing moves."""
    torch.set_num_threads(1)
    teacher = Teacher(backbone=_teacher_backbone().eval().requires_grad_(False), arch="vitt16")
    held_out = _batches(1, seed=7)[0].global_crops
    train = _batches(3, seed=0)
    dist = {}
    for lr in (2e-3, 0.0):
        torch.manual_seed(0)
        cfg = DistillConfig.from_dict(
            {
                "output_dir": str(tmp_path / f"lr{lr}"),
                "mode": "features",
                "students": _students()[:1],
                "optim": {"lr": lr, "warmup_iters": 0, "layer_decay": 1.0, "schedule": "constant"},
                "train": {"iterations": 15},
            }
        )
        d = Distiller(cfg, teacher)
        before = _distance_to_teacher(d, "vit", held_out)
        for i in range(15):
            d.step(train[i % len(train)])
        dist[lr] = (before, _distance_to_teacher(d, "vit", held_out))
    (before, after), (before0, after0) = dist[2e-3], dist[0.0]
    assert before == before0  # the same student to start with
    for k in ("cls_cos", "patch_cos"):
        assert after[k] < 0.5 * before[k], dist
    assert after0 == before0, dist


def _with_indices(b: Batch, masks: torch.Tensor | None = None) -> Batch:
    """``b`` with host-drawn flat mask positions, as the loaders give (of ``masks`` if given)."""
    m = b.masks if masks is None else masks
    return Batch(b.global_crops, b.local_crops, b.masks, b.n_global, b.sim, m.flatten().nonzero().flatten())


def _two_steps(tmp_path, batches: list[Batch]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    tmp_path.mkdir()
    torch.manual_seed(0)
    d = Distiller(_cfg(tmp_path), load_teacher(_teacher_file(tmp_path)))
    hist = [d.step(b) for b in batches]
    return hist, {k: v.detach().clone() for k, v in d.students["vit"].state_dict().items()}


def test_host_mask_positions_give_the_boolean_index_results(tmp_path):
    """Masked patches gathered at the loader's flat positions equal the boolean-indexed ones; positions
    of another mask (a plausible bug: positions out of step with the masks) change the results."""
    plain = _batches(2)
    ref_hist, ref = _two_steps(tmp_path / "a", plain)
    hist, got = _two_steps(tmp_path / "b", [_with_indices(b) for b in plain])
    assert hist == ref_hist
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    shifted = [_with_indices(b, b.masks.roll(1, dims=0)) for b in plain]
    bad_hist, _ = _two_steps(tmp_path / "c", shifted)
    assert bad_hist[0]["vit"]["ibot"] != ref_hist[0]["vit"]["ibot"]


def test_the_heads_step_has_no_device_wait_patterns(tmp_path):
    """With the loader's mask positions, the step selects masked patches without the ops that wait for
    a CUDA device (seen on CPU); without them (control) the boolean index is seen."""
    from _sync_patterns import SyncPatterns

    torch.set_num_threads(1)
    d = Distiller(_cfg(tmp_path), load_teacher(_teacher_file(tmp_path)))
    first, second = (_with_indices(b) for b in _batches(2))
    d.step(first)
    with SyncPatterns() as rec:
        d.step(second)
    assert rec.found == []
    with SyncPatterns() as ctl:
        d.step(_batches(1)[0])
    assert "boolean indexing" in ctl.found


def test_deferred_losses_equal_the_synchronous_ones_and_a_non_finite_one_raises_at_flush(tmp_path):
    """``step(sync=False)`` leaves the loss terms on the device; :meth:`Distiller.flush` reads them in one
    go, equal to what ``step()`` returns, and names the step whose loss was not finite."""
    torch.set_num_threads(1)
    batches = [_with_indices(b) for b in _batches(3)]
    tmp_path.joinpath("a").mkdir()
    tmp_path.joinpath("b").mkdir()
    torch.manual_seed(0)
    ref = Distiller(_cfg(tmp_path / "a"), load_teacher(_teacher_file(tmp_path / "a")))
    want = [ref.step(b) for b in batches]
    torch.manual_seed(0)
    d = Distiller(_cfg(tmp_path / "b"), load_teacher(_teacher_file(tmp_path / "b")))
    assert all(d.step(b, sync=False) is None for b in batches)
    got = d.flush()
    assert [it for it, _ in got] == [0, 1, 2] and [m for _, m in got] == want
    assert d.flush() == []
    bad = _with_indices(_batches(1)[0])
    bad.global_crops[0, 0, 0, 0] = float("nan")
    d.step(batches[0], sync=False)
    d.step(bad, sync=False)  # no check here: the step does not wait for the device
    with pytest.raises(FloatingPointError, match="non-finite loss nan at iteration 4"):
        d.flush()
    with pytest.raises(FloatingPointError, match="at iteration 5"):
        d.step(bad)  # synchronous: before the update


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs CUDA: runs on the GPU machine (python benchmarks/run.py cuda-tests)",
)
def test_the_cuda_distill_step_does_not_synchronise(tmp_path):
    d = Distiller(_cfg(tmp_path), load_teacher(_teacher_file(tmp_path)), "cuda")
    batches = [_with_indices(b).to(torch.device("cuda")) for b in _batches(3)]
    d.step(batches[0], sync=False)  # first step: allocations, lazy initialisation
    d.flush()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches[1:]:
            d.step(b, sync=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [it for it, _ in d.flush()] == [1, 2]


def test_activation_checkpointing_gives_the_same_run(tmp_path):
    """``train.activation_checkpointing: N`` wraps the students' first N blocks and changes nothing else:
    students, EMAs and optimizer states after a few steps equal a run without it, with stochastic depth on
    (recomputation replays the random draws); a run without drop-path on the same batches differs."""
    torch.set_num_threads(1)
    path = _teacher_file(tmp_path)
    batches = _batches(3)
    runs = {}
    for n, drop in ((0, 0.2), (2, 0.2), (2, 0.0)):
        torch.manual_seed(0)
        cfg = _cfg(tmp_path / f"ac{n}_{drop}", activation_checkpointing=n)
        for s in cfg.students:
            s.overrides = {**(s.overrides or {}), "drop_path_rate": drop}
        d = Distiller(cfg, load_teacher(path))
        for b in batches:
            d.step(b)
        runs[n, drop] = d
    on, off = runs[2, 0.2], runs[0, 0.2]
    wrapped = [type(b).__name__ for b in on.students["vit"].backbone.blocks]
    assert wrapped[:2] == ["CheckpointWrapper"] * 2 and "CheckpointWrapper" not in wrapped[2:]
    for name in ("vit", "cnx"):
        _assert_same_state(off.students[name].state_dict(), on.students[name].state_dict(), f"{name} student")
        _assert_same_state(off.emas[name].state_dict(), on.emas[name].state_dict(), f"{name} ema")
        _assert_same_state(off.optims[name].state_dict(), on.optims[name].state_dict(), f"{name} optimizer")
    with pytest.raises(AssertionError):  # negative control: the drop-path draws matter
        _assert_same_state(off.students["vit"].state_dict(), runs[2, 0.0].students["vit"].state_dict(), "vit")

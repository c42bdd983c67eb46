"""load_backbone over every supported container/layout, arch inference, error paths, registry and the
``dinov3-ros inspect-weights`` CLI. Real files on disk, small ViT-Ti/16 weights."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml
from safetensors.torch import save_file

from dinov3_ros import cli
from dinov3_ros.models import (
    ARCHS,
    ArchMismatchError,
    HashMismatchError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
    load_backbone,
    official_to_hf,
    official_to_timm,
)
from dinov3_ros.models.loading import arch_from_name, sha256_file
from dinov3_ros.models.registry import (
    OFFICIAL_NAME_RE,
    entry_for_file,
    get_entry,
    load_registry,
    registry_path,
)
from dinov3_ros.models.testing import random_backbone

X = torch.randn(1, 3, 32, 48)


@pytest.fixture(scope="module")
def ref():
    return random_backbone("vitt16", seed=31)


@pytest.fixture(scope="module")
def official_file(ref, tmp_path_factory):
    """An official-style file name carrying the true sha256 prefix."""
    d = tmp_path_factory.mktemp("ckpt")
    tmp = d / "tmp.pth"
    torch.save(ref.state_dict(), tmp)
    path = d / f"dinov3_vitt16_pretrain_lvd1689m-{sha256_file(tmp)[:8]}.pth"
    tmp.rename(path)
    return path


def _same(model, ref) -> None:
    with torch.no_grad():
        assert torch.equal(model(X), ref(X))


def test_official_file_loads_with_hash_and_name(official_file, ref) -> None:
    m = load_backbone(official_file)
    _same(m, ref)
    info = m.checkpoint_info
    assert (m.arch, info.format, info.hash_status, info.arch_source) == (
        "vitt16",
        "official",
        "ok",
        "file name",
    )
    assert not m.training


def test_hash_mismatch_is_reported(official_file, tmp_path) -> None:
    bad = tmp_path / "dinov3_vitt16_pretrain_lvd1689m-0badc0de.pth"
    shutil.copy(official_file, bad)
    real = sha256_file(bad)[:8]
    with pytest.raises(HashMismatchError, match=f"sha256 starts with {real}.*says 0badc0de"):
        load_backbone(bad)
    assert load_backbone(bad, verify_hash=False).checkpoint_info.hash_status == "not checked"


def test_wrong_arch_names_expected_arch_keys_and_cause(official_file) -> None:
    with pytest.raises(ArchMismatchError) as e:
        load_backbone(official_file, arch="vits16")
    msg = str(e.value)
    assert "expected arch 'vits16'" in msg
    assert "shape mismatch" in msg and "cls_token: checkpoint (1, 1, 192) vs model (1, 1, 384)" in msg
    assert "likely cause: the file is a 'vitt16' checkpoint" in msg


def test_missing_keys_reported_as_incomplete(ref, tmp_path) -> None:
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("blocks.11.")}
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(ArchMismatchError) as e:
        load_backbone(path, arch="vitt16")
    msg = str(e.value)
    assert "15 missing key(s), first: ['blocks.11.norm1.weight'" in msg
    assert "likely cause:" in msg


def test_truncated_file(official_file, tmp_path) -> None:
    data = official_file.read_bytes()
    cut = tmp_path / "dinov3_vitt16_cut.pth"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(TruncatedCheckpointError, match="truncated or corrupt"):
        load_backbone(cut)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in official_to_hf(torch.load(official_file)).items()}, str(st))
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(TruncatedCheckpointError, match="safetensors"):
        load_backbone(st)


class _Payload:
    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __reduce__(self):
        return (os.mkdir, (self.flag,))


def test_pickle_payload_refused(tmp_path) -> None:
    flag = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "x": _Payload(str(flag))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load.*GLOBAL posix\.mkdir|refused to load"):
        load_backbone(path)
    assert not flag.exists()


def test_hf_safetensors_bin_and_directory(ref, tmp_path) -> None:
    hf = {k: v.contiguous() for k, v in official_to_hf(ref.state_dict()).items()}
    d = tmp_path / "dinov3-vitt16-pretrain-lvd1689m"
    d.mkdir()
    save_file(hf, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "dinov3_vit", "num_attention_heads": 3}))
    for target in (d, d / "model.safetensors"):
        m = load_backbone(target)
        assert m.arch == "vitt16" and m.checkpoint_info.format == "hf"
        _same(m, ref)
    b = tmp_path / "binary"
    b.mkdir()
    torch.save(official_to_hf(ref.state_dict(), layer_prefix="model.layer."), b / "pytorch_model.bin")
    m = load_backbone(b)
    assert m.checkpoint_info.arch_source == "shapes"
    _same(m, ref)


def test_timm_and_wrapped_training_checkpoints(ref, tmp_path) -> None:
    p = tmp_path / "weights.pth"
    torch.save(official_to_timm(ref.state_dict()), p)
    m = load_backbone(p)
    assert m.checkpoint_info.format == "timm" and m.arch == "vitt16"
    with torch.no_grad():
        # timm drops mask_token (only used with masks), everything else is identical
        assert torch.allclose(m(X), ref(X), atol=0)
    teacher = {
        "teacher": {
            **{f"backbone.{k}": v for k, v in ref.state_dict().items()},
            "dino_head.w": torch.zeros(3),
        }
    }
    p2 = tmp_path / "teacher_checkpoint.pth"
    torch.save(teacher, p2)
    _same(load_backbone(p2), ref)
    p3 = tmp_path / "ours.pth"  # our own format: state_dict + arch + normalisation metadata
    torch.save(
        {"arch": "vitt16", "norm_mean": [0.5] * 3, "norm_std": [0.2] * 3, "model": ref.state_dict()}, p3
    )
    m3 = load_backbone(p3, dtype=torch.bfloat16)
    assert m3.checkpoint_info.arch_source == "metadata" and m3.norm_mean == (0.5, 0.5, 0.5)
    assert m3.cls_token.dtype == torch.bfloat16 and m3.rope_embed.periods.dtype == torch.float32


def test_sat_normalisation_local_norm_and_nan_mask(ref, tmp_path) -> None:
    sd = dict(ref.state_dict())
    sd["local_cls_norm.weight"] = torch.ones(192)
    sd["local_cls_norm.bias"] = torch.zeros(192)
    sd["blocks.0.attn.qkv.bias_mask"] = torch.full(
        (576,), float("nan")
    )  # as the reference constructor leaves it
    p = tmp_path / "dinov3_vitt16_pretrain_sat493m.pth"
    torch.save(sd, p)
    m = load_backbone(p)
    assert m.checkpoint_info.normalization == "sat493m"
    assert m.norm_mean == (0.430, 0.411, 0.296) and m.norm_std == (0.213, 0.156, 0.143)
    assert m.local_cls_norm is not None
    assert all(torch.isfinite(v).all() for v in m.state_dict().values())
    _same(m, ref)


def test_arch_from_names() -> None:
    assert arch_from_name("dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth") == "vits16plus"
    assert arch_from_name("dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth") == "vitl16"
    assert arch_from_name("facebook/dinov3-convnext-small-pretrain-lvd1689m") == "convnext_small"
    assert arch_from_name("vit_huge_plus_patch16_dinov3.lvd1689m.safetensors") == "vith16plus"
    assert arch_from_name("weights.pth") is None


def test_registry_entries_consistent() -> None:
    reg = load_registry()
    for arch in [a for a, s in ARCHS.items() if s.official]:
        assert arch in reg, arch
    for name, e in reg.items():
        spec = ARCHS[e.arch]
        assert e.embed_dim == spec.embed_dim
        extra = 2 * spec.embed_dim if e.untie_global_and_local_cls_norm else 0
        assert e.params == spec.params + extra, name
        if e.file:
            m = OFFICIAL_NAME_RE.match(e.file)
            assert m and m.group(2) == e.sha256_prefix, name
            assert arch_from_name(e.file) == e.arch
            assert entry_for_file(f"/somewhere/{e.file}") == e
        expected_norm = "sat493m" if "sat493m" in name else "lvd1689m"
        assert e.normalization == expected_norm
        assert e.license
    assert reg["vitl16_sat493m"].norm_mean == (0.430, 0.411, 0.296)
    assert reg["vits16"].hf_repo == "facebook/dinov3-vits16-pretrain-lvd1689m"
    assert get_entry("default").arch == "vits16"
    with pytest.raises(KeyError, match="no registry entry"):
        get_entry("nope")


def test_default_entry_clear_error_then_loads_when_shipped(tmp_path, monkeypatch) -> None:
    src = yaml.safe_load(registry_path().read_text())
    monkeypatch.setenv("DINOV3_ROS_SHARE", str(tmp_path / "share"))
    models = tmp_path / "share" / "models"
    (models / "default").mkdir(parents=True)
    (models / "registry.yaml").write_text(yaml.safe_dump(src))
    with pytest.raises(FileNotFoundError, match="registry entry 'default'"):
        load_backbone("default")
    m = random_backbone("vits16", seed=33, depth=12)
    torch.save(m.state_dict(), models / "default" / "dinov3_vits16_dinov3ros.pth")
    loaded = load_backbone("default")
    assert loaded.arch == "vits16" and loaded.checkpoint_info.registry_entry == "default"
    _same(loaded, m)


def test_inspect_weights_cli(official_file, tmp_path, capsys) -> None:
    assert cli.main(["inspect-weights", str(official_file), "--json", "--check-load"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["arch"] == "vitt16" and rep["format"] == "official" and rep["hash"] == "ok"
    assert rep["params"] == ARCHS["vitt16"].params and rep["load"] == "ok"
    assert rep["mean"] == [0.485, 0.456, 0.406]
    bad = tmp_path / "dinov3_vitt16_pretrain_lvd1689m-12345678.pth"
    shutil.copy(official_file, bad)
    assert cli.main(["inspect-weights", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH: name says 12345678" in out and "parameters:    5,492,160 (5.49M)" in out
    assert cli.main(["inspect-weights", str(tmp_path / "missing.pth")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_arch_from_shapes_for_every_arch() -> None:
    """Shape-based inference recognises every arch (meta tensors: no memory), also via HF/timm layouts."""
    from dinov3_ros.models import build_backbone, convnext_official_to_hf, to_official
    from dinov3_ros.models.loading import arch_from_shapes

    for arch, spec in ARCHS.items():
        sd = build_backbone(arch, device="meta").state_dict()
        assert arch_from_shapes(sd) == arch
        if spec.kind == "convnext":
            conv, fmt = to_official(convnext_official_to_hf(sd, stage_prefix="model.stages."))
            assert fmt == "hf_convnext" and arch_from_shapes(conv) == arch
        elif arch in ("vits16plus", "vit7b16"):
            assert arch_from_shapes(to_official(official_to_hf(sd), num_heads=spec.num_heads)[0]) == arch
            assert arch_from_shapes(to_official(official_to_timm(sd))[0]) == arch


def test_plain_strict_load_state_dict_of_saved_file(official_file, ref) -> None:
    """The issue's contract: load_state_dict(torch.load(f, weights_only=True), strict=True) works unchanged."""
    from dinov3_ros.models import build_backbone

    fresh = build_backbone("vitt16")
    result = fresh.load_state_dict(torch.load(official_file, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _same(fresh, ref)
    # negative control: a load that leaves one block at its init is not "the same" model
    partial = build_backbone("vitt16")
    sd = {
        k: v for k, v in torch.load(official_file, weights_only=True).items() if not k.startswith("blocks.5.")
    }
    partial.load_state_dict(sd, strict=False)
    with pytest.raises(AssertionError):
        _same(partial, ref)


def test_convnext_official_and_hf_checkpoints(tmp_path) -> None:
    from dinov3_ros.models import convnext_official_to_hf

    m = random_backbone("convnext_tiny", seed=34)
    official = tmp_path / "dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth"
    torch.save(m.state_dict(), official)
    hf_dir = tmp_path / "dinov3-convnext-tiny-pretrain-lvd1689m"
    hf_dir.mkdir()
    hf = {k: v.contiguous() for k, v in convnext_official_to_hf(m.state_dict()).items()}
    save_file(hf, str(hf_dir / "model.safetensors"))
    a = load_backbone(official, verify_hash=False)
    b = load_backbone(hf_dir, patch_size=16)
    assert a.arch == b.arch == "convnext_tiny" and b.checkpoint_info.format == "hf_convnext"
    assert (a.patch_size, b.patch_size) == (32, 16)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), m(x)) and torch.equal(b(x), m(x))

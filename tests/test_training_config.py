"""`dinov3-train` configs are validated (closest key for typos, types, ranges: one message, exit 2, no
traceback), runs refuse to resume under a changed config unless allowed, and a resumed pretraining run
ends in the same full state (model, EMA teacher, optimizer, RNG, iteration) as an uninterrupted one."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from training import cli
from training.config import ConfigError, Rule, config_changes, load_config, validate_values

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training/configs/tiny_cpu.yaml"
DISTILL = REPO / "training/configs/distill_default_vits16.yaml"
DEPTH = REPO / "training/configs/depth_default_vits16.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_root_logging")


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("command", "config", "override", "message"),
    [
        ("pretrain", TINY, "optim.lrr=1", "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("pretrain", TINY, "train.iteration=3", "(did you mean 'train.iterations'?)"),
        ("pretrain", TINY, "optim.lr=abc", "optim.lr must be a number, got 'abc'"),
        ("pretrain", TINY, "train.iterations=-5", "train.iterations must be >= 1, got -5"),
        ("pretrain", TINY, "train.iterations=2.5", "train.iterations must be an integer, got 2.5"),
        ("pretrain", TINY, "optim.betas=[0.9]", "optim.betas must be a list of 2"),
        ("pretrain", TINY, "train.param_dtype=fp64", "train.param_dtype must be one of"),
        (
            "pretrain",
            TINY,
            "train.parallel=dp",
            "train.parallel must be one of ['auto', 'ddp', 'fsdp', 'none']",
        ),
        ("pretrain", TINY, "optim.lr=[", "is not valid YAML"),
        ("pretrain", TINY, "optim=3", "optim must be a mapping"),
        ("distill", DISTILL, "loss.dinoo=1", "unknown config key 'loss.dinoo' (did you mean 'loss.dino'?)"),
        ("distill", DISTILL, "optim.lr=abc", "optim.lr must be a number, got 'abc'"),
        ("distill", DISTILL, "train.iterations=-5", "train.iterations must be >= 1, got -5"),
        ("distill", DISTILL, "mode=feature", "mode must be one of ['heads', 'features']"),
        ("depth", DEPTH, "optim.lrr=1", "(did you mean 'optim.lr'?)"),
        ("depth", DEPTH, "train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("depth", DEPTH, "head.max_depth=inf", "head.max_depth must be a finite number"),
        # errors found while setting the run up (they need the model or the files): a message too
        ("pretrain", TINY, "model.arch=vits17", "cannot set up the model: unknown arch 'vits17'"),
        ("pretrain", TINY, "model.backbone.depthh=2", "unknown override(s) ['depthh']"),
        ("pretrain", TINY, "data.sources=[{type: foldr}]", "cannot set up the data: unknown data source"),
        ("pretrain", TINY, "data.sources=[{type: folder, root: /nonexistent}]", "image folder not found"),
        ("pretrain", TINY, "model.pretrained=/nonexistent.pth", "backbone checkpoint not found"),
        ("pretrain", TINY, "crops.global_crops_size=50", "must be multiples of the patch size 16"),
        ("depth", DEPTH, "backbone.weights=null", "cannot set up the depth head and its backbone"),
    ],
)
def test_bad_overrides_end_in_one_message_and_exit_2(tmp_path, capsys, command, config, override, message):
    out = f"train.output_dir={tmp_path}" if command == "pretrain" else f"output_dir={tmp_path}"
    extra = ["--device", "cpu", "backbone.arch=vits17"] if "backbone.weights" in override else []
    rc = cli.main([command, "--config", str(config), out, override, *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert "Traceback" not in err and err.startswith(f"dinov3-train {command}: ")
    assert len(err.strip().splitlines()) == 1, err


def test_several_problems_are_reported_together_and_numbers_are_converted():
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["optim.lr=abc", "train.batch_size_per_gpu=0"])
    assert "optim.lr must be a number" in str(e.value) and "batch_size_per_gpu must be >= 1" in str(e.value)
    cfg = load_config(TINY, ["optim.lr=1e-3", "optim.warmup_iters=0.1"])  # YAML 1.1 reads 1e-3 as a string
    assert cfg["optim"]["lr"] == 0.001 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["optim"]["warmup_iters"] == 0.1
    # the error is both a ValueError (CLI) and a KeyError (older callers of merge)
    with pytest.raises(KeyError, match="did you mean"):
        load_config(TINY, ["dino.n_prototype=3"])


def test_rule_bounds_and_kinds():
    rules = {"a": Rule("num", 0, 1, hi_open=True), "b": Rule("int", 1, null=True), "c": Rule("bool")}
    ok = validate_values({"a": "0.5", "b": None, "c": True}, {"a": 0.0, "b": 1, "c": False}, rules, "t")
    assert ok == {"a": 0.5, "b": None, "c": True}
    for bad, msg in [
        ({"a": 1.0}, "a must be < 1"),
        ({"a": True}, "a must be a finite number"),
        ({"b": 0}, "b must be >= 1"),
        ({"c": "yes"}, "c must be true or false"),
        ({"a": float("nan")}, "finite"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            validate_values(bad, {"a": 0.0, "b": 1, "c": False}, rules, "t")


def test_config_changes_lists_changed_added_and_removed_keys():
    a = {"optim": {"lr": 1.0, "betas": [0.9, 0.99]}, "train": {"output_dir": "x", "iterations": 3}}
    b = {"optim": {"lr": 2.0, "betas": [0.9, 0.99], "new": 1}, "train": {"output_dir": "y"}}
    assert config_changes(a, b, {"train.output_dir"}) == [
        "optim.lr: 1.0 -> 2.0",
        "optim.new: (absent) -> 1",
        "train.iterations: 3 -> (absent)",
    ]
    assert config_changes(a, a) == []


def _stage_loader(p: Path):
    """The config loader of the stage a shipped YAML belongs to (by its keys)."""
    from training import depth_head, distill, objects_head

    text = p.read_text()
    if "students:" in text:
        return lambda q: distill.DistillConfig.from_dict(distill.load_config(q))
    if "pos_margin" in text or "objects" in p.name:
        return objects_head.load_config
    if "head:" in text and "backbone:" in text and "model:" not in text:
        return depth_head.load_config
    return load_config


def test_every_shipped_config_validates():
    shipped = [
        *(REPO / "training/configs").glob("*.yaml"),
        *(REPO / "training/recipes").glob("default_*.yaml"),
    ]
    for p in sorted(shipped):
        _stage_loader(p)(p)


def test_ssl_only_ablation_is_the_default_teacher_without_any_simulator_loss():
    """The ablation must differ from the teacher only in the simulator losses, and must switch off every
    one of them (a loss added to the teacher's ``sim.losses`` is inherited through ``_base_`` otherwise)."""
    recipes = REPO / "training/recipes"
    teacher = load_config(recipes / "default_teacher.yaml")
    ablation = load_config(recipes / "default_teacher_ssl_only.yaml")

    def without(d: dict, key: str) -> dict:
        return {k: v for k, v in d.items() if k != key}

    weights = without(ablation["sim"]["losses"], "neg_margin")
    teacher_weights = without(teacher["sim"]["losses"], "neg_margin")
    assert set(weights) == set(teacher_weights)
    assert all(v == 0.0 for v in weights.values()), weights
    assert any(v > 0.0 for v in teacher_weights.values())
    for section in teacher:
        if section in ("sim", "train"):
            continue
        assert ablation[section] == teacher[section], section
    assert ablation["sim"]["pool"] == teacher["sim"]["pool"]
    assert without(ablation["train"], "output_dir") == without(teacher["train"], "output_dir")


# ---------------------------------------------------------------- resume guard


def _pretrain(out: Path, *extra: str) -> int:
    return cli.main(
        [
            "pretrain",
            "--config",
            str(TINY),
            f"train.output_dir={out}",
            "train.iterations=2",
            "train.checkpoint_period=1",
            "train.batch_size_per_gpu=2",
            "train.tensorboard=false",
            *extra,
        ]
    )


def test_pretraining_refuses_to_resume_under_a_changed_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert _pretrain(out, "train.stop_at_iteration=1") == 0
    capsys.readouterr()
    saved = (out / "config.yaml").read_text()
    # a changed learning rate: refused, nothing touched
    assert _pretrain(out, "optim.lr=1e-3") == 2
    err = capsys.readouterr().err
    assert "holds a run started with a different config" in err and "optim.lr: 0.002 -> 0.001" in err
    assert "--allow-config-change" in err and "Traceback" not in err
    assert (out / "config.yaml").read_text() == saved
    assert [p.name for p in sorted((out / "ckpt").iterdir())] == ["00000001"]
    # where and how long it runs may change: resumes
    assert _pretrain(out, "train.stop_at_iteration=2", "train.max_seconds=600", "train.log_period=5") == 0
    assert "resumed from" in capsys.readouterr().out
    # allowed: the run continues under the new config, the old one is kept next to it
    assert _pretrain(out, "optim.lr=1e-3", "train.iterations=3", "--allow-config-change") == 0
    o = capsys.readouterr().out
    assert "resuming under a changed config" in o and "train.iterations: 2 -> 3" in o
    assert "done: iteration 3" in o
    before = yaml.safe_load((out / "config.before-00000002.yaml").read_text())
    assert before["optim"] == yaml.safe_load(saved)["optim"] and before["train"]["iterations"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.001
    # the config key does the same as the flag; a finished run says so
    assert _pretrain(out, "optim.lr=1e-3", "train.iterations=3") == 0
    o = capsys.readouterr().out
    assert "already finished (iteration 3 of 3)" in o and "done: iteration 3" in o
    assert _pretrain(out, "optim.lr=5e-4", "train.iterations=3", "train.allow_config_change=true") == 0


def test_distillation_refuses_to_resume_under_a_changed_config(tmp_path, capsys):
    from test_training_distill import _cfg, _teacher_file

    from training.distill import DistillConfig, load_teacher, run

    teacher = load_teacher(_teacher_file(tmp_path))
    raw = dict(_cfg(tmp_path).raw)
    raw["train"] = {**raw["train"], "iterations": 2, "batch_size_per_gpu": 2, "log_period": 1}
    raw["crops"] = {**raw["crops"], "global_crops_size": 32, "local_crops_size": 16, "local_crops_number": 1}
    raw["students"] = raw["students"][:1]
    raw["data"] = {"sources": [{"type": "procedural", "height": 48, "width": 48}], "num_workers": 0}
    d = run(DistillConfig.from_dict(raw), device="cpu", max_steps=1, teacher=teacher)
    assert d.iteration == 1
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.002 -> 0\.001") as e:
        run(DistillConfig.from_dict(raw, ["optim.lr=1e-3"]), device="cpu", teacher=teacher)
    assert "--allow-config-change" in str(e.value)
    # the CLI ends in one message and exit 2 (the teacher file is real, so only the config differs)
    cfg_file = tmp_path / "d.yaml"
    cfg_file.write_text(yaml.safe_dump({**raw, "teacher": {"checkpoint": str(tmp_path / "teacher.pth")}}))
    assert cli.main(["distill", "--config", str(cfg_file), "--device", "cpu", "optim.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.002 -> 0.001" in err and "teacher.checkpoint" in err and "Traceback" not in err
    d = run(DistillConfig.from_dict(raw, ["train.max_seconds=100"]), device="cpu", teacher=teacher)
    assert d.iteration == 2
    allowed = DistillConfig.from_dict(
        raw, ["optim.lr=1e-3", "train.iterations=3", "train.allow_config_change=true"]
    )
    assert run(allowed, device="cpu", teacher=teacher).iteration == 3
    assert (allowed.output_dir / "config.before-0.yaml").is_file()


def test_distill_without_a_teacher_says_what_it_needs(tmp_path, capsys):
    rc = cli.main(["distill", "--config", str(DISTILL), f"output_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "teacher checkpoint not found" in err and "dinov3-train pretrain --config" in err
    assert "teacher.checkpoint=" in err and "mode: features" in err
    rc = cli.main(
        [
            "distill",
            "--config",
            str(REPO / "training/configs/distill_features_vitl16.yaml"),
            f"output_dir={tmp_path / 'f'}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "teacher.checkpoint is not set" in err and "load_backbone" in err


def test_depth_head_refuses_to_resume_under_a_changed_config(tmp_path):
    from test_training_depth import _cfg

    from training.depth_head import run

    cfg = _cfg(tmp_path, **{"iterations": 2})
    tr, _ = run(cfg, device="cpu", max_steps=1)
    assert tr.iteration == 1
    changed = {**cfg, "optim": {**cfg["optim"], "lr": cfg["optim"]["lr"] * 2}}
    with pytest.raises(ConfigError, match=r"optim\.lr: "):
        run(changed, device="cpu")
    changed["train"] = {**changed["train"], "allow_config_change": True}
    tr, metrics = run(changed, device="cpu")
    assert tr.iteration == 2 and metrics is not None


# ---------------------------------------------------------------- bit-exact resume


def _assert_same(a, b, what: str) -> None:
    """Nested dicts/lists of tensors and plain values equal exactly (same keys, dtypes and bits)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), what
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), what
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (what, list(a)[:5], list(b)[:5])
        for k in a:
            _assert_same(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{what}[{i}]")
    else:
        assert a == b, (what, a, b)


def _full_state(res: dict) -> dict:
    st = res["state"]
    return {
        "model": st.model.state_dict(),  # student, EMA teacher (and Gram teacher when used)
        "optimizer": st.optimizer.state_dict(),
        "iteration": st.iteration,
        "gram_updates": st.gram_updates,
        "rng_torch": torch.get_rng_state(),
        "rng_numpy": np.random.get_state()[1].copy(),
        "rng_python": random.getstate(),
    }


def test_pretraining_resume_reaches_the_same_full_state_bit_for_bit(tmp_path):
    from training.pretrain import run_pretraining, train_step

    common = ["train.iterations=4", "train.checkpoint_period=2", "train.batch_size_per_gpu=2"]
    torch.manual_seed(0)
    ref = run_pretraining(load_config(TINY, [f"train.output_dir={tmp_path / 'ref'}", *common]))
    ref_state = _full_state(ref)
    out = tmp_path / "run"
    first = run_pretraining(
        load_config(TINY, [f"train.output_dir={out}", *common, "train.stop_at_iteration=2"])
    )
    assert first["iteration"] == 2
    torch.manual_seed(123)  # the checkpoint restores every RNG
    np.random.seed(5)
    random.seed(5)
    resumed = run_pretraining(load_config(TINY, [f"train.output_dir={out}", *common]))
    assert [h["iteration"] for h in resumed["history"]] == [2, 3]
    _assert_same(ref_state, _full_state(resumed), "state")
    teacher_keys = [k for k in ref_state["model"] if k.startswith("teacher.")]
    assert teacher_keys and ref_state["optimizer"]["state"]
    # negative control: one more step on the reference breaks the equality
    batch = next(iter(_one_batch(ref["state"])))
    train_step(ref["state"], batch, 4)
    with pytest.raises(AssertionError):
        _assert_same(_full_state(ref)["model"], _full_state(resumed)["model"], "model")


def _one_batch(state):
    from training.data import build_pretrain_loader

    cfg = state.cfg
    return build_pretrain_loader(
        {**cfg["data"], "crops": cfg["crops"]}, batch_size=2, patch_size=state.model.patch_size, max_iter=1
    )

"""Every documented way to run a serialized TensorRT plan, short of TensorRT itself.

The ways: Python ``load_model``, node parameters (``dinov3_node``), lifecycle node parameters, launch
arguments (``backend:=tensorrt engine:=model.plan``), ``dinov3-ros run``, ``dinov3-ros process --backend
tensorrt --weights model.plan``, and the plan ``dinov3-ros export --format tensorrt`` writes; plus the
README's and docs/JETSON.md's commands as written. TensorRT and CUDA are replaced at their boundary
(``_trt_boundary``: the strict fake ``tensorrt`` module, host-memory buffers); the one change made to the
documented commands is ``device cuda`` -> ``cpu`` (there is no CUDA device here). Everything else is
real: the ONNX export and its metadata, the plan's sidecar, parameters and their validation, the launch
file's mapping, rclpy over DDS, the bag tool, the pipeline.

Three kinds of plan are used, as a user has them: ``ours.plan`` (our export: a ``.plan.json`` sidecar),
``model.plan`` (built by ``trtexec`` from our ``model.onnx``, which lies next to it) and ``bare.engine``
(no metadata at all).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import _fake_tensorrt as fake
import pytest
import test_launch_files as tlf
import test_ros_node as trn
import torch

from dinov3_ros.pipeline.model import ModelLoadError, load_model
from dinov3_ros.runtime import trt_backend
from dinov3_ros.runtime.trt_backend import TrtEngine, plan_sidecar, save_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = str(Path(__file__).with_name("_trt_boundary.py"))
H, W = 96, 128  # the plans' network input
DOCS = [ROOT / "README.md", ROOT / "docs" / "JETSON.md"]


@pytest.fixture
def trt(monkeypatch):
    """The boundary in this process (undone after the test)."""
    mod = fake.module()
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    monkeypatch.setattr(trt_backend, "_cuda_device", lambda device: torch.device("cpu"))
    return mod


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> SimpleNamespace:
    """ours.plan (+ sidecar), model.plan next to model.onnx (a trtexec build), bare.engine."""
    from dinov3_ros.runtime.export import export_onnx
    from dinov3_ros.runtime.weights import random_backbone

    d = tmp_path_factory.mktemp("plans")
    bb = random_backbone("vitt16")
    onnx_path, _ = export_onnx(bb, d / "model.onnx", resolution=(H, W))
    C = int(bb.embed_dim)
    body = fake.vit_plan(H, W, C=C, depth=True, max_batch=1)  # as `dinov3-ros export` builds it
    ours = save_plan(d / "ours.plan", body, plan_sidecar(onnx_path, "fp16", fake.VERSION, None))
    (d / "model.plan").write_bytes(body)
    (d / "bare.engine").write_bytes(body)
    return SimpleNamespace(
        dir=d, onnx=onnx_path, C=C, ours=ours, trtexec=d / "model.plan", bare=d / "bare.engine"
    )


def _frame(i: int = 0, h: int = 120, w: int = 160):
    from dinov3_ros.pipeline import Frame

    return Frame(trn._frame_rgb(i, w, h), i, "cam_optical", None, "s")


def _run_pipeline(model, outputs=("features", "depth"), device: str = "cpu") -> dict:
    from dinov3_ros.pipeline import PipelineConfig
    from dinov3_ros.pipeline.pipeline import Pipeline

    cfg = PipelineConfig(resolution=model.input_size, parallel_heads=False)
    pipe = Pipeline.from_model(model, cfg, device=device)
    return pipe.process([_frame()], set(outputs))[0]


# -- Python load_model ----------------------------------------------------------------------------
def test_load_model_runs_each_kind_of_plan(trt, plans):
    for plan, source, arch in (
        (plans.ours, "the sidecar", "vitt16"),
        (plans.trtexec, "the ONNX next to the plan", "vitt16"),
        (plans.bare, "the plan's I/O tensors", "unknown"),
    ):
        m = load_model(str(plan), "tensorrt", "cpu")
        eng = m.engine
        assert isinstance(eng, TrtEngine) and eng.engine_path == plan
        assert eng.info.extra["metadata"].startswith(source), eng.info.extra
        assert (m.input_size, m.patch_size, m.info["arch"]) == ((H, W), 16, arch)
        o = _run_pipeline(m)
        assert o["features"].shape == (H // 16, W // 16, plans.C) and o["depth"].image.shape == (120, 160)
        assert eng.context.executions == 1
    m = load_model(str(plans.ours), "tensorrt", "cpu")
    assert m.info["precision"] == "fp16"  # the plan's, not the default fp32 of the request
    from dinov3_ros.runtime.ort_backend import read_metadata

    assert m.mean == tuple(read_metadata(plans.onnx)["norm_mean"])


def test_load_model_refuses_a_plan_it_cannot_run(trt, plans):
    with pytest.raises(ModelLoadError, match=r"is a TensorRT plan: use backend 'tensorrt'"):
        load_model(str(plans.ours))  # backend torch, the default
    with pytest.raises(ModelLoadError, match=r"is a TensorRT plan: use backend 'tensorrt'"):
        load_model(str(plans.ours), "onnxruntime")
    with pytest.raises(ModelLoadError, match=r"weights file not found: .*missing\.plan"):
        load_model(str(plans.dir / "missing.plan"), "tensorrt", "cpu")
    with pytest.raises(ModelLoadError, match=r"depth_head .* applies to the torch backend"):
        load_model(str(plans.ours), "tensorrt", "cpu", depth_head=str(plans.onnx))
    with pytest.raises(ModelLoadError, match=r"built for 96x128 input, the configured resolution is 480x640"):
        load_model(str(plans.ours), "tensorrt", "cpu", resolution=(480, 640))
    assert load_model(str(plans.ours), "tensorrt", "cpu", resolution=(H, W)).input_size == (H, W)


# -- launch arguments -----------------------------------------------------------------------------
def test_launch_arguments_reach_load_model(trt, plans):
    """``backend:=tensorrt engine:=model.plan`` (and the backend from the extension, the lifecycle
    node, a resolution argument) become node parameters that load the plan."""
    for args in (
        {"backend": "tensorrt", "engine": str(plans.trtexec), "device": "cpu"},
        {"engine": str(plans.ours), "device": "cpu"},
        {"engine": str(plans.ours), "device": "cpu", "lifecycle": "true", "resolution": f"{H}x{W}"},
    ):
        ((node,), _) = tlf.launch("perception.launch.py", **args)
        s = tlf.settings(node)
        assert (s.backend, s.weights) == ("tensorrt", args["engine"])
        m = load_model(s.model())
        assert isinstance(m.engine, TrtEngine) and str(m.engine.engine_path) == args["engine"]
        assert m.input_size == (H, W)
    ((node,), _) = tlf.launch("multi_camera.launch.py", engine=str(plans.bare), device="cpu", cameras="a,b")
    s = tlf.settings(node)
    m = load_model(s.model())
    assert s.cameras == ["a", "b"] and isinstance(m.engine, TrtEngine) and m.input_size == (H, W)
    ((node,), _) = tlf.launch(
        "perception.launch.py", engine=str(plans.ours), device="cpu", resolution="480x640"
    )
    with pytest.raises(ModelLoadError, match="built for 96x128 input, the configured resolution is 480x640"):
        load_model(tlf.settings(node).model())
    ((node,), _) = tlf.launch("perception.launch.py", engine=str(plans.onnx), device="cpu")
    m = load_model(tlf.settings(node).model())  # an ONNX engine runs on ONNX Runtime
    assert m.engine.info.backend == "onnxruntime" and m.input_size == (H, W)


# -- the documented commands as written -----------------------------------------------------------
def _doc_lines(prefix: str) -> list[tuple[str, list[str]]]:
    out = []
    for path in DOCS:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(prefix) and ".plan" in line:
                out.append((f"{path.name}: {line}", shlex.split(line)))
    return out


def _doc_plan(where: Path, name: str) -> Path:
    """A fake plan named as in the docs, at the size its name says (``..._480x640.plan``)."""
    m = re.search(r"(\d+)x(\d+)", name)
    h, w = (int(m.group(1)), int(m.group(2))) if m else (H, W)
    plan = where / name
    plan.write_bytes(fake.vit_plan(h, w, C=24, depth=True, max_batch=1))
    return plan


def _cpu(words: list[str]) -> list[str]:
    """The one change to a documented command: no CUDA device here."""
    out = [w.replace("device:=cuda", "device:=cpu") for w in words]
    return ["cpu" if a == "cuda" and out[i - 1] == "--device" else a for i, a in enumerate(out)]


LAUNCH_LINES = _doc_lines("ros2 launch dinov3_ros")
PROCESS_LINES = _doc_lines("dinov3-ros process")


def test_docs_have_plan_commands():
    assert {w.split(":")[0] for w, _ in LAUNCH_LINES} == {"README.md", "JETSON.md"}, LAUNCH_LINES
    assert PROCESS_LINES, "docs/JETSON.md runs dinov3-ros process on a plan"


@pytest.mark.parametrize("where,words", LAUNCH_LINES, ids=[w for w, _ in LAUNCH_LINES])
def test_doc_launch_line_loads_the_plan(trt, tmp_path, monkeypatch, where, words):
    args = dict(w.split(":=", 1) for w in _cpu(words)[4:])
    plan = _doc_plan(tmp_path, args["engine"])
    monkeypatch.chdir(tmp_path)  # the plan is named relative to where the command runs
    nodes, _ = tlf.launch(words[3], **args)
    for node in nodes:
        m = load_model(tlf.settings(node).model())
        assert isinstance(m.engine, TrtEngine) and m.engine.engine_path.resolve() == plan, where
        assert m.input_size == m.engine.signature.input_hw()


@pytest.mark.parametrize("where,words", PROCESS_LINES, ids=[w for w, _ in PROCESS_LINES])
def test_doc_process_line_runs_the_plan(trt, tmp_path, monkeypatch, where, words, capsys):
    from rosbags.highlevel import AnyReader

    from dinov3_ros.cli import main

    words = _cpu(words)
    plan = _doc_plan(tmp_path, words[words.index("--weights") + 1])
    images = tmp_path / "INPUT"
    images.mkdir()
    import cv2

    for i in range(2):
        cv2.imwrite(str(images / f"{i:03d}.png"), trn._frame_rgb(i, 160, 120)[:, :, ::-1])
    words = ["INPUT" if w.startswith("INPUT") else w for w in words]
    monkeypatch.chdir(tmp_path)
    rc = main(words[1:])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert plan.exists()
    with AnyReader([tmp_path / words[words.index("--out") + 1]]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts and all(n == 2 for n in counts.values()), counts


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "JETSON.md").read_text(), re.S)


def test_doc_python_block_loads_the_plan(trt, tmp_path, monkeypatch, capsys):
    (code,) = _python_blocks()
    name = re.search(r'load_model\("([^"]+)"', code).group(1)
    _doc_plan(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"cuda"', '"cpu"'), "JETSON.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("(480, 640) the plan's I/O tensors"), printed
    assert printed[1] == "(30, 40, 24) (480, 640)", printed  # the stand-in plan is 24 channels wide


# -- the bag tool ---------------------------------------------------------------------------------
def test_process_cli_with_a_plan(trt, plans, tmp_path, capsys):
    import cv2
    from rosbags.highlevel import AnyReader

    from dinov3_ros.cli import main

    images = tmp_path / "frames"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i:03d}.png"), trn._frame_rgb(i, 160, 120)[:, :, ::-1])
    base = ["process", str(images), "--backend", "tensorrt", "--device", "cpu", "--outputs", "features,depth"]
    rc = main(
        [*base, "--weights", str(plans.trtexec), "--resolution", f"{H}x{W}", "--out", str(tmp_path / "o")]
    )
    assert rc == 0, capsys.readouterr().err
    with AnyReader([tmp_path / "o"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/dinov3/features"] == 3 and counts["/dinov3/depth/image"] == 3, counts
    # a resolution the plan was not built for: one clear message before anything is written
    capsys.readouterr()
    rc = main([*base, "--weights", str(plans.ours), "--resolution", "224x224", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 1 and "built for 96x128 input, the configured resolution is 224x224" in err, err
    assert not (tmp_path / "p").exists()
    rc = main(["process", str(images), "--weights", str(plans.ours), "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert rc == 1 and "is a TensorRT plan: use backend 'tensorrt'" in err, err


# -- export --format tensorrt ---------------------------------------------------------------------
def test_export_tensorrt_writes_a_plan_that_loads(trt, tmp_path, monkeypatch, capsys):
    """``dinov3-ros export --format tensorrt``: ONNX, plan (the stand-in's builder: network, parser,
    config, profile, timing cache), sidecar; then load_model on the result."""
    from dinov3_ros.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", fake.builder_module())
    out = tmp_path / "m_64x80.plan"
    rc = main(["export", "--format", "tensorrt", "--arch", "vitt16", "--resolution", "64x80",
               "--precision", "fp16", "--batch", "2", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert f"wrote {out} (+ m_64x80.plan.json" in printed.out
    built = fake.built_with(out.read_bytes())  # an fp16 export builds strongly typed (fp32 LayerNorms)
    assert (built["flags"], built["network_flags"]) == ([], 1 << 1)
    assert (tmp_path / "m_64x80.onnx").exists() and (tmp_path / "m_64x80.timing.cache").exists()
    m = load_model(str(out), "tensorrt", "cpu")
    assert m.engine.info.extra["metadata"].startswith("the sidecar") and m.info["precision"] == "fp16"
    assert (m.input_size, m.info["arch"], m.engine.max_batch()) == ((64, 80), "vitt16", 2)
    o = _run_pipeline(m)
    assert o["features"].shape == (4, 5, 192)


EXPORT_LINES = _doc_lines("dinov3-ros export --format tensorrt")


@pytest.mark.slow
@pytest.mark.parametrize("where,words", EXPORT_LINES, ids=[w for w, _ in EXPORT_LINES])
def test_doc_export_line_writes_a_plan_that_loads(trt, tmp_path, monkeypatch, where, words, capsys):
    """The documented engine build as written (W.pth / H.pt: the shipped model and depth head), with the
    stand-in's builder; the plan then loads with its sidecar and has the depth output."""
    from dinov3_ros.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", fake.builder_module())
    shipped = {"W.pth": "dinov3_vits16_dinov3ros.pth", "H.pt": "depth_head.pt"}
    words = [str(ROOT / "models" / "default" / shipped[w]) if w in shipped else w for w in words]
    monkeypatch.chdir(tmp_path)
    assert main(words[1:]) == 0, capsys.readouterr().err
    plan = tmp_path / words[words.index("--out") + 1]
    m = load_model(str(plan), "tensorrt", "cpu")
    assert (m.input_size, m.info["arch"], m.info["precision"]) == ((480, 640), "vits16", "fp16")
    assert m.engine.info.outputs == ("patch_tokens", "cls", "depth")


def test_docs_build_plans_with_our_export():
    assert {w.split(":")[0] for w, _ in EXPORT_LINES} == {"README.md", "JETSON.md"}, EXPORT_LINES


# -- node, lifecycle node and dinov3-ros run (child processes, real DDS) --------------------------
def _wait_for(proc: subprocess.Popen, log: Path, text: str, timeout: float = 90) -> str:
    t_end = time.time() + timeout
    while text not in log.read_text() and time.time() < t_end:
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    out = log.read_text()
    assert text in out, out
    return out


def test_node_parameters_run_a_plan(plans, tmp_path):
    """``ros2 run dinov3_ros dinov3_node --ros-args -p weights:=model.plan -p backend:=tensorrt``: the
    node takes its input size from the plan (resolution left empty) and publishes its outputs."""
    from dinov3_ros.ros.params import node_command

    cmd = node_command(
        {"weights": str(plans.trtexec), "backend": "tensorrt", "device": "cpu"},
        params_file=ROOT / "config/dinov3.yaml",
        node_name=trn.NODE_NAME,
    )
    assert cmd[1:3] == ["-m", "dinov3_ros.ros.node"]
    cmd.insert(1, BOUNDARY)
    log = tmp_path / "node.log"
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = _wait_for(p, log, "loaded in")
        assert f"on tensorrt/cpu/unknown at {H}x{W} (auto)" in out and "(vitt16)" in out, out
        items = [{"kind": "raw", "encoding": "rgb8", "stamp": 5_000 + k, "pause": 0.5} for k in range(3)]
        with trn._Session(tmp_path, "plan", {"topics": ["features", "depth/image"]}, items) as s:
            s.wait_pub()
            want = {(t, 5_000 + k) for t in ("features", "depth/image") for k in range(3)}
            recs = s.stop_sub(until=lambda r: want <= {(x["topic"], x.get("stamp")) for x in r})
    finally:
        trn._kill(p)
    got = {(r["topic"], r.get("stamp")) for r in recs}
    assert want <= got, (sorted(got), log.read_text())


LIFECYCLE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import _trt_boundary
    _trt_boundary.install()
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter
    from dinov3_ros.ros.lifecycle import PerceptionLifecycleNode
    from dinov3_ros.runtime.trt_backend import TrtEngine

    rclpy.init()
    n = PerceptionLifecycleNode({name!r}, parameter_overrides=[
        Parameter("weights", value={plan!r}), Parameter("backend", value="tensorrt"),
        Parameter("device", value="cpu"), Parameter("resolution", value=[480, 640])])
    assert n.trigger_configure() == R.FAILURE and n.core.model is None
    n.set_parameters([Parameter("resolution", value="")])
    assert n.trigger_configure() == R.SUCCESS
    assert isinstance(n.core.model.engine, TrtEngine), n.core.model.engine
    assert n.core.settings.resolution == {size!r}, n.core.settings.resolution
    assert n.core.pipeline.config.resolution == {size!r}
    assert n.trigger_activate() == R.SUCCESS and n.count_subscribers("image") == 1
    assert n.trigger_deactivate() == R.SUCCESS and n.trigger_cleanup() == R.SUCCESS
    n.set_parameters([Parameter("weights", value={onnx!r}), Parameter("backend", value="onnxruntime")])
    assert n.trigger_configure() == R.SUCCESS  # a fixed-size ONNX sets the size the same way
    assert n.core.settings.resolution == {size!r}
    n.destroy_node()
    rclpy.shutdown()
    print("LIFECYCLE_PLAN_OK")
    """
)


def test_lifecycle_node_parameters_run_a_plan(plans):
    script = LIFECYCLE.format(tests=str(Path(__file__).parent), name=f"{trn.NODE_NAME}_lc",
                              plan=str(plans.ours), onnx=str(plans.onnx), size=(H, W))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0 and "LIFECYCLE_PLAN_OK" in out.stdout, out.stdout + out.stderr
    assert "configure failed" in out.stderr
    assert f"was built for {H}x{W} input, the configured resolution is 480x640" in out.stderr, out.stderr


def test_dinov3_ros_run_with_a_plan(plans, tmp_path):
    cmd = [sys.executable, BOUNDARY, "-m", "dinov3_ros.cli", "run", "--params", str(ROOT / "config/dinov3.yaml"),
           "--set", f"weights:={plans.ours}", "--set", "backend:=tensorrt", "--set", "device:=cpu",
           "--name", f"{trn.NODE_NAME}_run", "--duration", "2"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"on tensorrt/cpu/fp16 at {H}x{W} (auto)" in out.stderr, out.stderr
    cmd[cmd.index(f"weights:={plans.ours}")] = f"weights:={plans.dir / 'missing.plan'}"
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 1 and "weights file not found" in out.stderr, out.stderr


def test_without_the_boundary_a_plan_needs_tensorrt(plans, monkeypatch):
    """Negative control: the same call without the stand-in fails for lack of TensorRT, with the hint."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(
        ModelLoadError, match=r"TensorRT Python bindings are not installed.*python3-libnvinfer"
    ):
        load_model(str(plans.ours), "tensorrt", "cpu")


# -- with the real TensorRT (GPU machine) ---------------------------------------------------------
HAS_TRT_CUDA = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT_CUDA, reason="needs TensorRT and CUDA: runs on the GPU machine with TensorRT")
def test_real_tensorrt_plan_through_load_model(tmp_path, capsys):  # pragma: no cover - GPU machine only
    """The same path with the real TensorRT: ``dinov3-ros export --format tensorrt`` (batch-1 plan with
    sidecar), a plan beside its ONNX (as trtexec leaves it), load_model, a batch of 3 run in chunks, and
    the features against ONNX Runtime on the same ONNX."""
    from dinov3_ros.cli import main

    plan = tmp_path / "m.plan"
    rc = main(["export", "--format", "tensorrt", "--arch", "vitt16", "--resolution", "64x96",
               "--precision", "fp32", "--out", str(plan)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    m = load_model(str(plan), "tensorrt", "cuda")
    assert m.input_size == (64, 96) and m.engine.max_batch() == 1
    twin = tmp_path / "trtexec" / "m.plan"  # no sidecar: the ONNX beside it supplies the metadata
    twin.parent.mkdir()
    twin.write_bytes(plan.read_bytes())
    (twin.parent / "m.onnx").write_bytes((tmp_path / "m.onnx").read_bytes())
    m2 = load_model(str(twin), "tensorrt", "cuda")
    assert (
        m2.engine.info.extra["metadata"].startswith("the ONNX next to the plan")
        and m2.info["arch"] == "vitt16"
    )
    ort = load_model(str(tmp_path / "m.onnx"), "onnxruntime", "cpu")
    x = torch.randn(3, 3, 64, 96)
    a = m.engine.run(x.cuda())["patch_tokens"].float().cpu()
    b = ort.engine.run(x)["patch_tokens"]
    cos = torch.nn.functional.cosine_similarity(a.flatten(0, 2), b.flatten(0, 2), dim=-1)
    assert a.shape == b.shape == (3, 4, 6, 192) and cos.min() > 0.999
    o = _run_pipeline(m2, ("features",), device="cuda")
    assert o["features"].shape == (4, 6, 192)

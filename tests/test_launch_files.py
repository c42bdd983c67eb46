"""Launch files, evaluated against a faithful stand-in of the launch API.

ROS 2's ``launch`` and ``launch_ros`` are not on PyPI (the ``launch`` there is an unrelated
application launcher) nor in Debian, so they cannot be installed here. The stand-in below accepts
exactly the constructor signatures of the real classes the launch files use (keyword-only where the
real ones are, required arguments required, unknown keywords refused) and resolves the node's final
parameters the way launch_ros does: the parameter files in order, then each dictionary on top. The
result is validated by the node's own parameter validation. Every ``ros2 launch`` line of the README
and the docs is run as written.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from dinov3_ros.ros import params as P

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = {p.name: p for p in (ROOT / "launch").glob("*.launch.py")}
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "models/README.md"]
#: ExecuteProcess keywords a launch_ros Node/LifecycleNode passes on
EXECUTE_PROCESS_KW = {"output", "emulate_tty", "respawn", "respawn_delay", "additional_env", "cwd", "shell",
                      "sigterm_timeout", "sigkill_timeout", "on_exit", "log_cmd", "prefix"}  # fmt: skip


# -- the stand-in ---------------------------------------------------------------------------------
class Context:
    def __init__(self, args: dict[str, str]) -> None:
        self.launch_configurations = dict(args)


class LaunchConfiguration:
    def __init__(self, variable_name: str, *, default: Any = None) -> None:
        self.name, self.default = variable_name, default

    def perform(self, context: Context) -> str:
        if self.name in context.launch_configurations:
            return context.launch_configurations[self.name]
        if self.default is None:
            raise KeyError(f"launch configuration '{self.name}' does not exist")
        return self.default


class PathJoinSubstitution:
    def __init__(self, substitutions: list) -> None:
        self.parts = list(substitutions)

    def perform(self, context: Context) -> str:
        return "/".join(p.perform(context) if hasattr(p, "perform") else str(p) for p in self.parts)


class FindPackageShare:
    def __init__(self, package: str) -> None:
        assert package == "dinov3_ros", package
        self.package = package

    def perform(self, context: Context) -> str:
        return str(ROOT)  # the share directory holds config/ as the source tree does


class DeclareLaunchArgument:
    def __init__(self, name: str, *, default_value: Any = None, description: str | None = None,
                 choices: list | None = None) -> None:  # fmt: skip
        assert isinstance(name, str) and (default_value is None or isinstance(default_value, str))
        self.name, self.default_value, self.description = name, default_value, description


class OpaqueFunction:
    def __init__(self, *, function: Any, args: Any = None, kwargs: Any = None) -> None:
        self.function = function


class ParameterValue:
    def __init__(self, value: Any, *, value_type: Any = None) -> None:
        self.value, self.value_type = value, value_type


class Node:
    kind = "Node"

    def __init__(self, *, executable: str, package: str | None = None, name: str | None = None,
                 namespace: str | None = None, exec_name: str | None = None, parameters: list | None = None,
                 remappings: list | None = None, ros_arguments: list | None = None,
                 arguments: list | None = None, **kwargs: Any) -> None:  # fmt: skip
        unknown = set(kwargs) - EXECUTE_PROCESS_KW
        assert not unknown, f"launch_ros.actions.Node got unexpected keywords {unknown}"
        self.executable, self.package, self.name, self.namespace = executable, package, name, namespace
        self.parameters, self.remappings = parameters or [], remappings or []
        self.ros_arguments, self.arguments = ros_arguments or [], arguments or []


class LifecycleNode(Node):
    kind = "LifecycleNode"

    def __init__(self, *, name: str, namespace: str, **kwargs: Any) -> None:  # both required in launch_ros
        assert isinstance(namespace, str)
        super().__init__(name=name, namespace=namespace, **kwargs)


def _modules() -> dict[str, types.ModuleType]:
    mods = {
        "launch": {"LaunchDescription": lambda initial_entities=None: list(initial_entities or [])},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument, "OpaqueFunction": OpaqueFunction},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration, "PathJoinSubstitution": PathJoinSubstitution},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node, "LifecycleNode": LifecycleNode},
        "launch_ros.parameter_descriptions": {"ParameterValue": ParameterValue},
        "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
    }  # fmt: skip
    out = {}
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        out[name] = m
    return out


def launch(name: str, **given: str) -> tuple[list[Node], dict[str, DeclareLaunchArgument]]:
    """Evaluate launch file ``name`` with ``arg:=value`` arguments; returns its nodes and arguments."""
    stubs = _modules()
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH[name])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        entities = mod.generate_launch_description()
        decl = {e.name: e for e in entities if isinstance(e, DeclareLaunchArgument)}
        unknown = set(given) - set(decl)
        assert not unknown, f"{name} declares no argument(s) {sorted(unknown)}"
        ctx = Context(
            {**{k: d.default_value for k, d in decl.items() if d.default_value is not None}, **given}
        )
        nodes: list[Node] = []
        for e in entities:
            if isinstance(e, OpaqueFunction):
                nodes += e.function(ctx)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    for n in nodes:
        n.context = ctx
    return nodes, decl


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def final_parameters(node: Node) -> dict[str, Any]:
    """What the node is given: the files' ``/**`` / node-name entries in order, dictionaries on top
    (ParameterValue(value_type=str) stays a string; other strings are YAML-evaluated, as launch_ros does)."""
    out: dict[str, Any] = {}
    for entry in node.parameters:
        if isinstance(entry, dict):
            for k, v in entry.items():
                out[k] = v.value if isinstance(v, ParameterValue) and v.value_type is str else (
                    yaml.safe_load(v) if isinstance(v, str) else v)  # fmt: skip
            continue
        path = entry.perform(node.context) if hasattr(entry, "perform") else str(entry)
        doc = yaml.safe_load(Path(path).read_text())
        for key in ("/**", node.name, f"/{node.name}"):
            if key in doc:
                out.update(_flat(doc[key]["ros__parameters"]))
    return out


def settings(node: Node) -> P.NodeSettings:
    vals = final_parameters(node)
    vals.pop("use_sim_time", None)
    unknown = P.unknown_parameters(vals, P.all_parameter_names())
    assert not unknown, unknown
    return P.validate({**P.all_defaults(), **vals})


# -- tests ----------------------------------------------------------------------------------------
def test_user_parameter_file_is_not_overridden_by_launch_defaults(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text(
        "/**:\n  ros__parameters:\n    device: cuda:1\n    weights: random:vits16\n    backend: onnxruntime\n"
        "    precision: fp16\n    resolution: [480, 640]\n    lazy: false\n"
    )
    ((node,), _) = launch("perception.launch.py", params_file=str(user))
    vals = final_parameters(node)
    assert (vals["device"], vals["weights"], vals["backend"], vals["precision"]) == (
        "cuda:1", "random:vits16", "onnxruntime", "fp16")  # fmt: skip
    assert vals["resolution"] == [480, 640] and vals["lazy"] is False
    # given arguments do override the file
    ((node,), _) = launch("perception.launch.py", params_file=str(user), device="cpu", resolution="240x320")
    s = settings(node)
    assert s.device == "cpu" and s.resolution == (240, 320) and s.weights == "random:vits16"
    # negative control: the old behaviour (defaults passed as overrides) would have replaced the file's device
    assert final_parameters(node)["backend"] == "onnxruntime"


def test_perception_launch_engine_resolution_topics_log_level():
    ((node,), decl) = launch(
        "perception.launch.py",
        image="/cam/color/image_raw",
        engine="/m/dinov3_s16_480x640.plan",
        namespace="robot",
        use_sim_time="true",
        log_level="debug",
        resolution="480x640",
        output_qos="sensor_data",
    )
    assert {"resolution", "log_level", "input_qos", "output_qos", "engine", "camera_info"} <= set(decl)
    assert node.kind == "Node" and node.executable == "dinov3_node" and node.namespace == "robot"
    s = settings(node)
    assert s.weights == "/m/dinov3_s16_480x640.plan" and s.backend == "tensorrt"  # from the extension
    assert s.resolution == (480, 640) and s.output_qos == "sensor_data"
    assert final_parameters(node)["use_sim_time"] is True
    assert node.ros_arguments == ["--log-level", "debug"]
    rem = dict(node.remappings)
    assert (
        rem["image"] == "/cam/color/image_raw"
        and rem["image/compressed"] == "/cam/color/image_raw/compressed"
    )
    assert rem["camera_info"] == "/cam/color/camera_info"  # follows the image topic
    ((node,), _) = launch("perception.launch.py", image="/c/img", camera_info="/calib/info", engine="m.onnx")
    assert dict(node.remappings)["camera_info"] == "/calib/info"
    assert settings(node).backend == "onnxruntime"
    ((node,), _) = launch("perception.launch.py", engine="m.plan", backend="torch")  # given backend wins
    assert settings(node).backend == "torch"
    ((node,), _) = launch("perception.launch.py")  # defaults: the file decides, resolution from the engine
    s = settings(node)
    assert s.weights == "default" and s.resolution is None and node.ros_arguments == []
    assert dict(node.remappings)["camera_info"] == "camera_info"


def test_perception_launch_lifecycle():
    ((node,), _) = launch(
        "perception.launch.py", lifecycle="true", params_file=str(ROOT / "config/dinov3.yaml")
    )
    assert node.kind == "LifecycleNode" and node.executable == "dinov3_lifecycle_node"
    assert node.arguments == ["--autostart"] and node.name == "dinov3_node"
    assert settings(node).weights == "default"


def test_multi_camera_launch_remaps_each_camera():
    ((node,), _) = launch(
        "multi_camera.launch.py",
        cameras="front, rear",
        camera_prefix="/robot",
        image_suffix="color/image_raw",
    )
    s = settings(node)
    assert s.cameras == ["front", "rear"]
    rem = dict(node.remappings)
    assert rem["front/image"] == "/robot/front/color/image_raw"
    assert rem["rear/camera_info"] == "/robot/rear/camera_info"


def test_launch_executables_are_console_scripts():
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    scripts = next(
        {s.split("=")[0].strip() for s in ast.literal_eval(k.value)["console_scripts"]}
        for k in ast.walk(tree)
        if isinstance(k, ast.keyword) and k.arg == "entry_points"
    )
    for name in LAUNCH:
        for node in (
            launch(name)[0]
            + launch(name, **({"lifecycle": "true"} if name == "perception.launch.py" else {}))[0]
        ):
            assert node.package == "dinov3_ros" and node.executable in scripts


def test_stand_in_refuses_what_the_real_api_refuses():
    """Negative controls: the stand-in is strict where launch_ros is."""
    with pytest.raises(TypeError):
        LifecycleNode(executable="x", name="n")  # namespace is required
    with pytest.raises(AssertionError, match="unexpected keywords"):
        Node(executable="x", paramters=[])
    with pytest.raises(AssertionError, match="declares no argument"):
        launch("perception.launch.py", weigths="x")


def _doc_launch_lines() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("ros2 launch dinov3_ros"):
                out.append((f"{path.relative_to(ROOT)}: {line}", line.split("#", 1)[0]))
    return out


DOC_LINES = _doc_launch_lines()


def test_docs_have_launch_lines():
    assert len(DOC_LINES) >= 3, DOC_LINES


@pytest.mark.parametrize("where,line", DOC_LINES, ids=[w for w, _ in DOC_LINES])
def test_doc_launch_line_as_written(where, line):
    words = shlex.split(line)
    assert words[:3] == ["ros2", "launch", "dinov3_ros"] and words[3] in LAUNCH, where
    args = {}
    for w in words[4:]:
        m = re.fullmatch(r"([A-Za-z_]+):=(.*)", w)
        assert m, f"{where}: not an argument: {w!r}"
        args[m.group(1)] = m.group(2)
    nodes, _ = launch(words[3], **args)
    for node in nodes:
        s = settings(node)
        if "engine" in args:
            assert s.weights == args["engine"] and s.backend == (args.get("backend") or "tensorrt")
        for k in ("device", "backend", "weights", "depth_head"):
            if k in args:
                assert getattr(s, k) == args[k], (where, k)


def test_config_yaml_holds_only_declared_parameters_and_validates():
    doc = yaml.safe_load((ROOT / "config/dinov3.yaml").read_text())
    values = _flat(doc["/**"]["ros__parameters"])
    # resolution is left out (a commented example): a value of another type in the file would make rcl
    # ignore "-p resolution:=[H,W]" overrides
    assert set(values) == set(P.all_parameter_names()) - {"resolution"}
    values = {**P.all_defaults(), **values}
    s = P.validate(values)
    assert s.cameras == [""] and s.resolution is None and s.pipeline.resolution == P.DEFAULT_RESOLUTION
    for bad, match in (
        ({"pipeline.keyframe_policy": "often"}, "keyframe_policy"),
        ({"image_transport": "theora"}, "image_transport"),
        ({"weights": ""}, "weights"),
        ({"pipeline.depth_scale": float("inf")}, "finite"),
        ({"lazy": "yes"}, "lazy must be a bool"),
        ({"resolution": "480x641"}, "multiples of 16"),
    ):
        with pytest.raises(ValueError, match=match):
            P.validate({**values, **bad})
    with pytest.raises(ValueError, match="exceeds the model's 384"):
        P.validate({**values, "pipeline.features_k": 385}, channels=384)
    msgs = P.unknown_parameters({"weigths", "resoluton", "outputs.depht", "qos_overrides./x.publisher.depth"},
                                P.all_parameter_names())  # fmt: skip
    assert msgs == [
        "unknown parameter 'outputs.depht' (did you mean 'outputs.depth'?)",
        "unknown parameter 'resoluton' (did you mean 'resolution'?)",
        "unknown parameter 'weigths' (did you mean 'weights'?)",
    ]

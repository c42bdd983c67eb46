"""Launch files, checked statically (launch/launch_ros are not installable here).

They compile; every executable they start is a console script of setup.py; every parameter they set
is declared by the node; every file they name exists; config/dinov3.yaml only holds declared
parameters and validates. Their ``generate_launch_description`` also runs against minimal stand-ins
of the launch API to check the nodes, parameters and remappings they produce.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

from dinov3_ros.ros import params as P

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = {p.name: p for p in (ROOT / "launch").glob("*.launch.py")}


def console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            eps = ast.literal_eval(node.value)
            return {s.split("=")[0].strip() for s in eps["console_scripts"]}
    raise AssertionError("no entry_points in setup.py")


def declared() -> set[str]:
    return set(P.all_parameter_names()) | {"use_sim_time"}


def test_launch_files_present_and_compile():
    assert {"perception.launch.py", "multi_camera.launch.py"} <= set(LAUNCH)
    for path in LAUNCH.values():
        compile(path.read_text(), str(path), "exec")


@pytest.mark.parametrize("name", ["perception.launch.py", "multi_camera.launch.py"])
def test_static_names_exist(name):
    tree = ast.parse(LAUNCH[name].read_text())
    exes, overrides, joins, args = set(), set(), [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "executable":
            exes.add(ast.literal_eval(node.value))
        if isinstance(node, ast.keyword) and node.arg == "package":
            assert ast.literal_eval(node.value) == "dinov3_ros"
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "overrides" for t in node.targets):
            overrides |= {ast.literal_eval(k) for k in node.value.keys}
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGS" for t in node.targets):
            args = [a[0] for a in ast.literal_eval(node.value)]
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "PathJoinSubstitution":
            joins.append([e.value for e in node.args[0].elts if isinstance(e, ast.Constant)])
    assert exes and exes <= console_scripts(), exes
    assert overrides and overrides <= declared(), overrides - declared()
    for parts in joins:
        assert (ROOT.joinpath(*parts)).is_file(), parts
    for a in ("weights", "engine", "backend", "params_file", "namespace", "use_sim_time"):
        assert a in args, a
    if name == "perception.launch.py":
        assert {"image", "camera_info"} <= set(args)
    else:
        assert "cameras" in args


def test_config_yaml_holds_only_declared_parameters_and_validates():
    doc = yaml.safe_load((ROOT / "config/dinov3.yaml").read_text())
    params = doc["/**"]["ros__parameters"]

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    values = dict(flat(params))
    assert set(values) <= declared(), set(values) - declared()
    assert set(P.all_parameter_names()) <= set(values), set(P.all_parameter_names()) - set(values)
    s = P.validate(values)
    assert s.cameras == [""] and s.pipeline.resolution == (224, 224)
    bad = dict(values, **{"pipeline.keyframe_policy": "often"})
    with pytest.raises(ValueError, match="keyframe_policy"):
        P.validate(bad)
    with pytest.raises(ValueError, match="image_transport"):
        P.validate(dict(values, image_transport="theora"))
    with pytest.raises(ValueError, match="weights"):
        P.validate(dict(values, weights=""))


# -- run generate_launch_description against stand-ins of the launch API ---------------------------
class _Rec:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stub_modules(launched: list) -> dict[str, types.ModuleType]:
    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class Node(_Rec):
        def __init__(self, **kw):
            super().__init__(**kw)
            launched.append(("Node", kw))

    class LifecycleNode(_Rec):
        def __init__(self, **kw):
            super().__init__(**kw)
            launched.append(("LifecycleNode", kw))

    mods = {
        "launch": {"LaunchDescription": lambda entities: list(entities)},
        "launch.actions": {"DeclareLaunchArgument": _Rec, "OpaqueFunction": _Rec},
        "launch.substitutions": {
            "LaunchConfiguration": LaunchConfiguration,
            "PathJoinSubstitution": lambda parts: ("join", tuple(map(str, parts))),
        },
        "launch_ros.actions": {"Node": Node, "LifecycleNode": LifecycleNode},
        "launch_ros.substitutions": {"FindPackageShare": lambda pkg: f"<share:{pkg}>"},
        "launch_ros": {},
    }
    out = {}
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        out[name] = m
    return out


def _run(name: str, **given) -> list:
    launched: list = []
    stubs = _stub_modules(launched)
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH[name])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        entities = mod.generate_launch_description()
        context = {
            e.kwargs["name"] if "name" in e.kwargs else e.args[0]: e.kwargs.get("default_value")
            for e in entities
            if "default_value" in e.kwargs
        }
        context.update(given)
        for e in entities:
            if "function" in e.kwargs:
                e.kwargs["function"](context)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return launched


def test_perception_launch_produces_the_node():
    ((kind, kw),) = _run(
        "perception.launch.py",
        image="/cam/color/image_raw",
        engine="/m/model.plan",
        backend="tensorrt",
        namespace="robot",
        use_sim_time="true",
    )
    assert kind == "Node" and kw["executable"] == "dinov3_node" and kw["namespace"] == "robot"
    params_file, overrides = kw["parameters"]
    assert params_file == ("join", ("<share:dinov3_ros>", "config", "dinov3.yaml"))
    assert overrides["weights"] == "/m/model.plan" and overrides["backend"] == "tensorrt"
    assert overrides["use_sim_time"] is True and set(overrides) <= declared()
    assert ("image", "/cam/color/image_raw") in kw["remappings"]
    assert ("image/compressed", "/cam/color/image_raw/compressed") in kw["remappings"]
    ((kind, kw),) = _run("perception.launch.py", lifecycle="true", params_file="/x.yaml")
    assert kind == "LifecycleNode" and kw["executable"] == "dinov3_lifecycle_node"
    assert kw["arguments"] == ["--autostart"] and kw["parameters"][0] == "/x.yaml"
    assert kw["parameters"][1]["weights"] == "default"


def test_multi_camera_launch_remaps_each_camera():
    ((kind, kw),) = _run(
        "multi_camera.launch.py",
        cameras="front, rear",
        camera_prefix="/robot",
        image_suffix="color/image_raw",
    )
    assert kind == "Node" and kw["parameters"][1]["cameras"] == "front,rear"
    P.parse_cameras(kw["parameters"][1]["cameras"])
    rem = dict(kw["remappings"])
    assert rem["front/image"] == "/robot/front/color/image_raw"
    assert rem["rear/camera_info"] == "/robot/rear/camera_info"

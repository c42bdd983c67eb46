"""Perception node for one camera: ``ros2 launch dinov3_ros perception.launch.py image:=/camera/color/image_raw``.

Arguments override the parameter file only when given (an empty argument leaves the file's value):
weights, engine (a TensorRT plan / ONNX file: becomes ``weights``, and picks the backend from its
extension unless ``backend`` is given), depth_head, objects_head, backend, device, precision, resolution (``HxW``;
empty = the engine's own size), image_transport, input_qos / output_qos, params_file, namespace,
node_name, log_level, use_sim_time, lifecycle. ``camera_info`` defaults to the image topic's sibling
(``/camera/color/image_raw`` -> ``/camera/color/camera_info``), as image_transport's camera subscriber
expects.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

#: (argument, node parameter or None, description); "" = not given
ARGS = [
    ("weights", "weights", "checkpoint path, 'default' (models/registry.yaml) or 'random:<arch>'"),
    ("engine", "weights", "TensorRT plan (.plan/.engine) or ONNX model; overrides weights when set"),
    ("depth_head", "depth_head", "depth head file; 'auto' = the registry model's shipped head; 'none'"),
    ("objects_head", "objects_head", "objects head file; 'auto' = the registry model's shipped head; 'none'"),
    (
        "backend",
        "backend",
        "torch | onnxruntime | tensorrt (default: from engine's extension, else the file's)",
    ),
    ("device", "device", "cpu | cuda | cuda:N"),
    ("precision", "precision", "fp32 | fp16 | bf16 | int8"),
    ("resolution", "resolution", "network input HxW, e.g. 480x640 (default: the engine's own size)"),
    ("image_transport", "image_transport", "raw | compressed | both"),
    ("input_qos", "input_qos", "sensor_data | default | system_default"),
    ("output_qos", "output_qos", "sensor_data | default | system_default"),
    ("image", None, "input sensor_msgs/Image topic (its /compressed sibling is used for compressed)"),
    ("camera_info", None, "input sensor_msgs/CameraInfo topic (default: beside the image topic)"),
    ("params_file", None, "parameter YAML (default: the package's config/dinov3.yaml)"),
    ("namespace", None, "namespace of the node"),
    ("node_name", None, "name of the node (default dinov3_node)"),
    ("log_level", None, "debug | info | warn | error | fatal"),
    ("use_sim_time", "use_sim_time", "use /clock (true | false)"),
    ("lifecycle", None, "true: start dinov3_lifecycle_node (self-activating) instead of dinov3_node"),
]
ENGINE_BACKENDS = {".plan": "tensorrt", ".engine": "tensorrt", ".trt": "tensorrt", ".onnx": "onnxruntime"}


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def camera_info_beside(image: str) -> str:
    """``/cam/color/image_raw`` -> ``/cam/color/camera_info``; ``image`` -> ``camera_info``."""
    head, _, _tail = image.rstrip("/").rpartition("/")
    return f"{head}/camera_info" if head else ("/camera_info" if image.startswith("/") else "camera_info")


def overrides(cfg: dict) -> dict:
    """Node parameters from the launch arguments that were given (empty ones are left out)."""
    out = {}
    for arg, param, _ in ARGS:
        if param and cfg[arg] and arg != "engine":
            out[param] = cfg[arg]
    if cfg["engine"]:
        out["weights"] = cfg["engine"]
        ext = "." + cfg["engine"].rsplit(".", 1)[-1].lower() if "." in cfg["engine"] else ""
        if not cfg["backend"] and ext in ENGINE_BACKENDS:
            out["backend"] = ENGINE_BACKENDS[ext]
    if "resolution" in out:  # "480x640" -> [480, 640]: the type a parameter file uses for it
        hw = out["resolution"].lower().replace(",", "x").split("x")
        if len(hw) == 2 and all(v.strip().isdigit() for v in hw):
            out["resolution"] = [int(v) for v in hw]
    if "use_sim_time" in out:
        out["use_sim_time"] = _truthy(out["use_sim_time"])
    # strings stay strings (a weights file named '1' is not an integer)
    return {
        k: v if isinstance(v, (bool, list)) else ParameterValue(v, value_type=str) for k, v in out.items()
    }


def _nodes(context):
    cfg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGS}
    default_params = PathJoinSubstitution([FindPackageShare("dinov3_ros"), "config", "dinov3.yaml"])
    image = cfg["image"]
    remappings = [
        ("image", image),
        ("image/compressed", image.rstrip("/") + "/compressed"),
        ("camera_info", cfg["camera_info"] or camera_info_beside(image)),
    ]
    common = dict(
        package="dinov3_ros",
        name=cfg["node_name"] or "dinov3_node",
        namespace=cfg["namespace"],
        parameters=[cfg["params_file"] or default_params, overrides(cfg)],
        remappings=remappings,
        ros_arguments=["--log-level", cfg["log_level"]] if cfg["log_level"] else [],
        output="screen",
    )
    if _truthy(cfg["lifecycle"]):
        return [LifecycleNode(executable="dinov3_lifecycle_node", arguments=["--autostart"], **common)]
    return [Node(executable="dinov3_node", **common)]


def generate_launch_description():
    defaults = {"image": "image", "lifecycle": "false"}
    decl = [
        DeclareLaunchArgument(name, default_value=defaults.get(name, ""), description=desc)
        for name, _, desc in ARGS
    ]
    return LaunchDescription([*decl, OpaqueFunction(function=_nodes)])

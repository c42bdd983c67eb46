"""Perception node for one camera: ``ros2 launch dinov3_ros perception.launch.py image:=/camera/color/image_raw``.

Arguments: weights (path | default | random:<arch>), engine (a TensorRT plan / ONNX file; overrides
weights when set), backend, device, precision, image / camera_info topics, image_transport, params_file,
namespace, node_name, use_sim_time, lifecycle (start the managed node, configured + activated by itself).
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

ARGS = [
    ("weights", "default", "checkpoint path, 'default' (models/registry.yaml) or 'random:<arch>'"),
    ("engine", "", "TensorRT plan or ONNX model; overrides weights when set"),
    ("depth_head", "auto", "depth head file; 'auto' = the registry model's shipped head; 'none'"),
    ("backend", "torch", "torch | onnxruntime | tensorrt"),
    ("device", "cpu", "cpu | cuda | cuda:N"),
    ("precision", "fp32", "fp32 | fp16 | bf16"),
    ("image", "image", "input sensor_msgs/Image topic (its /compressed sibling is used for compressed)"),
    ("camera_info", "camera_info", "input sensor_msgs/CameraInfo topic"),
    ("image_transport", "raw", "raw | compressed | both"),
    ("params_file", "", "parameter YAML (default: the package's config/dinov3.yaml)"),
    ("namespace", "", "namespace of the node"),
    ("node_name", "dinov3_node", "name of the node"),
    ("use_sim_time", "false", "use /clock"),
    ("lifecycle", "false", "start dinov3_lifecycle_node (self-activating) instead of dinov3_node"),
]


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _nodes(context):
    cfg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGS}
    default_params = PathJoinSubstitution([FindPackageShare("dinov3_ros"), "config", "dinov3.yaml"])
    params_file = cfg["params_file"] or default_params
    weights = cfg["engine"] or cfg["weights"]
    overrides = {
        "weights": weights,
        "depth_head": cfg["depth_head"],
        "backend": cfg["backend"],
        "device": cfg["device"],
        "precision": cfg["precision"],
        "image_transport": cfg["image_transport"],
        "use_sim_time": _truthy(cfg["use_sim_time"]),
    }
    image = cfg["image"]
    remappings = [
        ("image", image),
        ("image/compressed", image + "/compressed"),
        ("camera_info", cfg["camera_info"]),
    ]
    common = dict(
        package="dinov3_ros",
        name=cfg["node_name"],
        namespace=cfg["namespace"],
        parameters=[params_file, overrides],
        remappings=remappings,
        output="screen",
    )
    if _truthy(cfg["lifecycle"]):
        return [LifecycleNode(executable="dinov3_lifecycle_node", arguments=["--autostart"], **common)]
    return [Node(executable="dinov3_node", **common)]


def generate_launch_description():
    decl = [
        DeclareLaunchArgument(name, default_value=default, description=desc) for name, default, desc in ARGS
    ]
    return LaunchDescription([*decl, OpaqueFunction(function=_nodes)])

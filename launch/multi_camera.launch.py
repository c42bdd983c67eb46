"""Several cameras through one node and one model (frames batched):
``ros2 launch dinov3_ros multi_camera.launch.py cameras:=front,rear``.

Each camera namespace ``<cam>`` reads ``<cam>/image`` (or ``<cam>/image/compressed``) and
``<cam>/camera_info`` relative to the node's namespace (prefix them with camera_prefix, e.g.
camera_prefix:=/robot gives /robot/front/image); outputs are ``~/<cam>/depth``, ``~/<cam>/points``, ...
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

ARGS = [
    ("cameras", "front,rear", "comma-separated camera namespaces"),
    ("camera_prefix", "", "topic prefix of every camera namespace, e.g. /robot"),
    ("image_suffix", "image", "image topic inside each camera namespace (e.g. color/image_raw)"),
    ("weights", "default", "checkpoint path, 'default' or 'random:<arch>'"),
    ("engine", "", "TensorRT plan or ONNX model; overrides weights when set"),
    ("depth_head", "auto", "depth head file; 'auto' = the registry model's shipped head; 'none'"),
    ("backend", "torch", "torch | onnxruntime | tensorrt"),
    ("device", "cpu", "cpu | cuda | cuda:N"),
    ("precision", "fp32", "fp32 | fp16 | bf16"),
    ("image_transport", "raw", "raw | compressed | both"),
    ("params_file", "", "parameter YAML (default: the package's config/dinov3.yaml)"),
    ("namespace", "", "namespace of the node"),
    ("use_sim_time", "false", "use /clock"),
]


def _nodes(context):
    cfg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGS}
    default_params = PathJoinSubstitution([FindPackageShare("dinov3_ros"), "config", "dinov3.yaml"])
    cams = [c.strip().strip("/") for c in cfg["cameras"].split(",") if c.strip()]
    prefix = cfg["camera_prefix"].rstrip("/")
    remappings = []
    for cam in cams:
        src = f"{prefix}/{cam}" if prefix else cam
        img = f"{src}/{cfg['image_suffix']}"
        remappings += [
            (f"{cam}/image", img),
            (f"{cam}/image/compressed", img + "/compressed"),
            (f"{cam}/camera_info", f"{src}/camera_info"),
        ]
    overrides = {
        "cameras": ",".join(cams),
        "weights": cfg["engine"] or cfg["weights"],
        "depth_head": cfg["depth_head"],
        "backend": cfg["backend"],
        "device": cfg["device"],
        "precision": cfg["precision"],
        "image_transport": cfg["image_transport"],
        "use_sim_time": cfg["use_sim_time"].strip().lower() in ("1", "true", "yes", "on"),
    }
    return [
        Node(
            package="dinov3_ros",
            executable="dinov3_node",
            name="dinov3_node",
            namespace=cfg["namespace"],
            parameters=[cfg["params_file"] or default_params, overrides],
            remappings=remappings,
            output="screen",
        )
    ]


def generate_launch_description():
    decl = [
        DeclareLaunchArgument(name, default_value=default, description=desc) for name, default, desc in ARGS
    ]
    return LaunchDescription([*decl, OpaqueFunction(function=_nodes)])

"""Several cameras through one node and one model (frames batched):
``ros2 launch dinov3_ros multi_camera.launch.py cameras:=front,rear``.

Each camera namespace ``<cam>`` reads ``<cam>/image`` (or ``<cam>/image/compressed``) and
``<cam>/camera_info`` relative to the node's namespace (prefix them with camera_prefix, e.g.
camera_prefix:=/robot gives /robot/front/image); outputs are ``~/<cam>/depth/image``,
``~/<cam>/depth/points``, ... Arguments override the parameter file only when given.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

#: (argument, node parameter or None, default, description); "" = not given
ARGS = [
    ("cameras", "cameras", "front,rear", "comma-separated camera namespaces"),
    ("camera_prefix", None, "", "topic prefix of every camera namespace, e.g. /robot"),
    ("image_suffix", None, "image", "image topic inside each camera namespace (e.g. color/image_raw)"),
    ("weights", "weights", "", "checkpoint path, 'default' or 'random:<arch>'"),
    ("engine", "weights", "", "TensorRT plan or ONNX model; overrides weights when set"),
    ("depth_head", "depth_head", "", "depth head file; 'auto' = the registry model's shipped head; 'none'"),
    ("objects_head", "objects_head", "", "objects head file; 'auto' = the registry model's head; 'none'"),
    ("backend", "backend", "", "torch | onnxruntime | tensorrt (default: from engine's extension)"),
    ("device", "device", "", "cpu | cuda | cuda:N"),
    ("precision", "precision", "", "fp32 | fp16 | bf16 | int8"),
    ("resolution", "resolution", "", "network input HxW (default: the engine's own size)"),
    ("image_transport", "image_transport", "", "raw | compressed | both"),
    ("input_qos", "input_qos", "", "sensor_data | default | system_default"),
    ("output_qos", "output_qos", "", "sensor_data | default | system_default"),
    ("params_file", None, "", "parameter YAML (default: the package's config/dinov3.yaml)"),
    ("namespace", None, "", "namespace of the node"),
    ("log_level", None, "", "debug | info | warn | error | fatal"),
    ("use_sim_time", "use_sim_time", "", "use /clock (true | false)"),
]
ENGINE_BACKENDS = {".plan": "tensorrt", ".engine": "tensorrt", ".trt": "tensorrt", ".onnx": "onnxruntime"}


def overrides(cfg: dict) -> dict:
    """Node parameters from the launch arguments that were given."""
    out = {p: cfg[a] for a, p, _, _ in ARGS if p and cfg[a] and a != "engine"}
    if cfg["engine"]:
        out["weights"] = cfg["engine"]
        ext = "." + cfg["engine"].rsplit(".", 1)[-1].lower() if "." in cfg["engine"] else ""
        if not cfg["backend"] and ext in ENGINE_BACKENDS:
            out["backend"] = ENGINE_BACKENDS[ext]
    if "cameras" in out:
        out["cameras"] = ",".join(c.strip().strip("/") for c in out["cameras"].split(",") if c.strip())
    if "resolution" in out:  # "480x640" -> [480, 640]: the type a parameter file uses for it
        hw = out["resolution"].lower().replace(",", "x").split("x")
        if len(hw) == 2 and all(v.strip().isdigit() for v in hw):
            out["resolution"] = [int(v) for v in hw]
    if "use_sim_time" in out:
        out["use_sim_time"] = out["use_sim_time"].strip().lower() in ("1", "true", "yes", "on")
    return {
        k: v if isinstance(v, (bool, list)) else ParameterValue(v, value_type=str) for k, v in out.items()
    }


def _nodes(context):
    cfg = {name: LaunchConfiguration(name).perform(context) for name, _, _, _ in ARGS}
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
    return [
        Node(
            package="dinov3_ros",
            executable="dinov3_node",
            name="dinov3_node",
            namespace=cfg["namespace"],
            parameters=[cfg["params_file"] or default_params, overrides(cfg)],
            remappings=remappings,
            ros_arguments=["--log-level", cfg["log_level"]] if cfg["log_level"] else [],
            output="screen",
        )
    ]


def generate_launch_description():
    decl = [
        DeclareLaunchArgument(name, default_value=default, description=desc)
        for name, _, default, desc in ARGS
    ]
    return LaunchDescription([*decl, OpaqueFunction(function=_nodes)])

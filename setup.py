"""ament_python package definition for dinov3_ros (also a plain pip-installable package)."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dinov3_ros"

ROS = [
    "ros-rclpy",
    "ros-sensor-msgs",
    "ros-std-msgs",
    "ros-geometry-msgs",
    "ros-diagnostic-msgs",
    "ros-visualization-msgs",
    "ros-nav-msgs",
    "ros-lifecycle-msgs",
    "ros-rmw-fastrtps-cpp",
    "rosbags",
]
TRAIN = ["tensorboard"]
DEV = [
    "pytest",
    "pytest-timeout",
    "ruff",
    "timm",
    "transformers",
    "colcon-core",
    "colcon-ros",
    "colcon-python-setup-py",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "training", "training.*"]),
    package_data={"training": ["configs/*.yaml"], PACKAGE: ["msgs/*.msg", "synthetic/data/*.npz"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.yaml") + glob("models/*.md")),
        (f"share/{PACKAGE}/models/default", [f for f in glob("models/default/*") if os.path.isfile(f)]),
        (f"share/{PACKAGE}/models/default/provenance", glob("models/default/provenance/*")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "torch",
        "pyyaml",
        "opencv-python-headless",
        "scipy",
        "safetensors",
        "onnx",
        "onnxruntime",
        "open3d",
        "rosbags",
        "scikit-image",
        "tqdm",
        "setuptools",
    ],
    extras_require={
        "ros": ROS,
        "train": TRAIN,
        # TensorRT comes with the target (JetPack's python3-libnvinfer, or NVIDIA's wheels on x86).
        "trt": ["tensorrt"],
        "dev": DEV,
    },
    zip_safe=True,
    maintainer="dinov3_ros developers",
    maintainer_email="dev@dinov3-ros.local",
    description="DINOv3 dense perception (features, PCA, depth, correspondences, TokenCut) for ROS 2 and video.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "dinov3-ros = dinov3_ros.cli:main",
            "dinov3-train = training.cli:main",
            "dinov3_node = dinov3_ros.ros.node:main",
            "dinov3_lifecycle_node = dinov3_ros.ros.lifecycle:main",
        ],
    },
)

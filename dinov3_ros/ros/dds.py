"""The DDS transport the node's large messages need, applied or diagnosed (no rclpy import).

Fast DDS's stock profile gives each participant a 0.5 MB shared-memory segment; the node's outputs
(features, depth, clouds, debug images) are 0.2-5 MB, and samples that do not fit wait for the next
reliable heartbeat (seconds). The package ships ``config/fastdds_local.xml`` (64 MB segment, 100 ms
heartbeat). :func:`apply_profile` points ``FASTDDS_DEFAULT_PROFILES_FILE`` at it before ``rclpy.init``
when the user set no profile and the middleware is Fast DDS; :func:`stock_profile_warning` says what
to do where that was too late (a node created in someone else's process). ``python -m
dinov3_ros.ros.dds`` prints the profile's path in any install (source tree, venv, colcon).
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
OPT_OUT = "DINOV3_ROS_DDS_PROFILE"  # "off": leave the transport alone


def profile_path() -> Path:
    """The shipped Fast DDS profile (``FileNotFoundError`` listing where it was looked for)."""
    from dinov3_ros.paths import config_dir

    path = config_dir() / "fastdds_local.xml"
    if not path.is_file():
        raise FileNotFoundError(f"Fast DDS profile not found: {path}")
    return path


def _fast_dds() -> bool:
    return os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps")


def _user_profile() -> str | None:
    for var in PROFILE_VARS:
        if os.environ.get(var):
            return os.environ[var]
    for name in ("DEFAULT_FASTDDS_PROFILES.xml", "DEFAULT_FASTRTPS_PROFILES.xml"):
        if Path(name).is_file():  # Fast DDS also loads these from the working directory
            return str(Path(name).resolve())
    return None


def apply_profile() -> str | None:
    """Use the shipped profile for this process's participants if the user set none (call before
    ``rclpy.init``); returns a line to log when it did."""
    if os.environ.get(OPT_OUT, "").lower() == "off" or not _fast_dds() or _user_profile():
        return None
    try:
        path = profile_path()
    except FileNotFoundError:
        return None
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    return f"Fast DDS: using {path} for large messages (set FASTDDS_DEFAULT_PROFILES_FILE to override)"


def stock_profile_warning() -> str | None:
    """A warning with the exact fix when this process runs Fast DDS on its stock profile."""
    if os.environ.get(OPT_OUT, "").lower() == "off" or not _fast_dds() or _user_profile():
        return None
    try:
        where = str(profile_path())
    except FileNotFoundError:
        where = "$(python -m dinov3_ros.ros.dds)"
    return (
        "Fast DDS runs on its stock profile (0.5 MB shared-memory segment): large outputs stall for "
        f"seconds. Fix: export FASTDDS_DEFAULT_PROFILES_FILE={where} before starting this process and its "
        "subscribers"
    )


if __name__ == "__main__":
    print(profile_path())

"""Every dependency key of package.xml resolves with rosdep on ROS 2 Humble (Ubuntu 22.04) and Jazzy (24.04).

``tests/data/rosdep_keys.json`` holds what rosdep's database (the ``ros/rosdistro`` repository:
``rosdep/base.yaml``, ``rosdep/python.yaml``, ``<distro>/distribution.yaml``) says about each key:
the apt package per Ubuntu release for system keys, the release repository for ROS packages. A key
added to package.xml fails here until the file is regenerated from a rosdistro checkout, which refuses
keys rosdep cannot resolve::

    git clone --depth 1 https://github.com/ros/rosdistro /tmp/rosdistro
    PYTHONPATH=$PWD python tests/test_rosdep_keys.py --write /tmp/rosdistro
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "tests" / "data" / "rosdep_keys.json"
DISTROS = {"humble": "jammy", "jazzy": "noble"}
DEPEND_TAGS = ("depend", "build_depend", "exec_depend", "test_depend", "buildtool_depend")


def package_keys() -> list[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return sorted({e.text.strip() for tag in DEPEND_TAGS for e in root.findall(tag) if e.text})


def _system_rule(rules: dict, key: str, ubuntu: str) -> list[str] | None:
    entry = rules.get(key)
    if entry is None:
        return None
    u = entry.get("ubuntu")
    if isinstance(u, list):
        return u
    if isinstance(u, dict):
        v = u.get(ubuntu, u.get("*"))
        if isinstance(v, dict):
            v = v.get("packages")
        return list(v) if v else None
    return None


def resolve(rosdistro: Path) -> dict[str, dict[str, object]]:
    """What rosdep resolves each package.xml key to on each distribution; ``SystemExit`` if one fails."""
    import yaml

    rules: dict = {}
    for f in ("base.yaml", "python.yaml"):
        rules.update(yaml.safe_load((rosdistro / "rosdep" / f).read_text()))
    out: dict[str, dict[str, object]] = {}
    failed = []
    for distro, ubuntu in DISTROS.items():
        repos = yaml.safe_load((rosdistro / distro / "distribution.yaml").read_text())["repositories"]
        pkgs = {}
        for repo, v in repos.items():
            for p in (v.get("release") or {}).get("packages", [repo]) if v.get("release") else []:
                pkgs[p] = repo
        for key in package_keys():
            if key in pkgs:
                out.setdefault(key, {})[distro] = {"ros_repository": pkgs[key]}
            elif (apt := _system_rule(rules, key, ubuntu)) is not None:
                out.setdefault(key, {})[distro] = {"apt": apt}
            else:
                failed.append(f"{key} ({distro})")
    if failed:
        raise SystemExit(f"rosdep cannot resolve: {', '.join(failed)}")
    return out


def test_every_package_xml_key_resolves():
    snap = json.loads(SNAPSHOT.read_text())["keys"]
    for key in package_keys():
        assert key in snap, f"package.xml key {key!r} not checked against rosdep (see this file's docstring)"
        for distro in DISTROS:
            assert distro in snap[key], f"{key!r} does not resolve on {distro}"


def test_snapshot_has_no_stale_keys():
    snap = json.loads(SNAPSHOT.read_text())["keys"]
    assert set(snap) == set(package_keys())


def test_package_xml_names_no_unreleased_package():
    assert "rclpy_lifecycle" not in package_keys()  # not a released package: lifecycle is in rclpy


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--write":
        raise SystemExit("usage: python tests/test_rosdep_keys.py --write ROSDISTRO_CHECKOUT")
    SNAPSHOT.write_text(
        json.dumps({"source": "github.com/ros/rosdistro", "keys": resolve(Path(sys.argv[2]))}, indent=1)
        + "\n"
    )
    print(f"wrote {SNAPSHOT}")

"""The small deterministic sample bag used by the demo and the tests (generated on demand, cached).

48 frames, 320x240, JPEG images, 32FC1 depth (quantised to 2^-10 m), instances, pose, camera info,
one scene of :class:`SceneGenerator` (seed 3); about 3.5 MB. It lives in the cache directory
(``$DINOV3_ROS_CACHE``, else ``$XDG_CACHE_HOME/dinov3_ros``, else ``~/.cache/dinov3_ros``) next to a
manifest with the generation parameters and the SHA-256 of every file; it is regenerated when
missing, when a hash does not match, or when the parameters changed. Checking and regenerating hold
an exclusive lock on a sibling ``.lock`` file, so concurrent processes never see a bag without its
manifest; the bag and the manifest are each replaced atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from dinov3_ros.synthetic.generator import GENERATOR_VERSION, SceneGenerator
from dinov3_ros.synthetic.writers import atomic_path, write_bag

SAMPLE_NAME = "sample_bag"
SAMPLE_PARAMS: dict = {
    "version": 1,
    "generator_version": GENERATOR_VERSION,
    "seed": 3,
    "scene": 0,
    "frames": 48,
    "width": 320,
    "height": 240,
    "compressed": True,
    "jpeg_quality": 85,
    "depth_encoding": "32FC1",
    "depth_quantum": 2.0**-10,
    "frame_rate": 10.0,
}


def cache_dir() -> Path:
    """The data cache directory (created)."""
    env = os.environ.get("DINOV3_ROS_CACHE")
    if env:
        d = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        d = (Path(xdg) if xdg else Path.home() / ".cache") / "dinov3_ros"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _hashes(bag: Path) -> dict[str, str]:
    out = {}
    for f in sorted(bag.iterdir()):
        if f.is_file():
            out[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _manifest_path(bag: Path) -> Path:
    return bag.with_name(bag.name + ".manifest.json")


def sample_ok(bag: Path) -> bool:
    """True when ``bag`` exists and matches its manifest (parameters and SHA-256 of every file)."""
    mf = _manifest_path(bag)
    if not bag.is_dir() or not mf.is_file():
        return False
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("params") == SAMPLE_PARAMS and manifest.get("sha256") == _hashes(bag)


def make_sample_bag(path: str | os.PathLike) -> Path:
    """Generate the sample bag at ``path`` (replacing it) and write its manifest."""
    p = SAMPLE_PARAMS
    gen = SceneGenerator(seed=p["seed"], width=p["width"], height=p["height"], frames_per_scene=p["frames"])
    bag = write_bag(
        gen.sequence(p["scene"]),
        path,
        compressed=p["compressed"],
        jpeg_quality=p["jpeg_quality"],
        depth_encoding=p["depth_encoding"],
        depth_quantum=p["depth_quantum"],
        frame_rate=p["frame_rate"],
        overwrite=True,
    )
    manifest = {"params": SAMPLE_PARAMS, "sha256": _hashes(bag)}
    with atomic_path(_manifest_path(bag), overwrite=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return bag


@contextlib.contextmanager
def _locked(bag: Path) -> Iterator[None]:
    """Exclusive lock on ``.<bag>.lock`` next to ``bag`` (released when the block ends or the process dies)."""
    bag.parent.mkdir(parents=True, exist_ok=True)
    with open(bag.parent / f".{bag.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_sample_bag(path: str | os.PathLike | None = None) -> Path:
    """Return the path of a valid sample bag directory, generating it if missing or corrupt."""
    bag = Path(path) if path is not None else cache_dir() / SAMPLE_NAME
    with _locked(bag):
        if sample_ok(bag):
            return bag
        _manifest_path(bag).unlink(missing_ok=True)  # an interrupted rewrite is never taken as valid
        return make_sample_bag(bag)


if __name__ == "__main__":
    print(ensure_sample_bag())

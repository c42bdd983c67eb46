"""`SceneGenerator`: deterministic, infinite stream of random textured rooms seen by a moving camera.

Scene ``s`` of a generator with seed ``seed`` is drawn from ``numpy.random.default_rng([seed, s])``,
so any frame can be rendered on its own (random access), in any process, in any order, and always
gives the same pixels. A room (floor, four walls, ceiling; instance 0) holds ``min_objects ..
max_objects`` textured objects (instances 1..N) resting on the floor; the camera orbits them on a
smooth path (:class:`camera.OrbitTrajectory`).
"""

from __future__ import annotations

import importlib.util
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from dinov3_ros.synthetic.camera import OrbitTrajectory, intrinsics
from dinov3_ros.synthetic.frame import SynthFrame
from dinov3_ros.synthetic.scene import Scene, SceneObject, quad
from dinov3_ros.synthetic.shapes import CLASS_NAMES, SPHERE_CLASS, canonical_mesh
from dinov3_ros.synthetic.textures import N_PROCEDURAL_PER_KIND, PROCEDURAL_KINDS, n_textures

#: bumped whenever the same (config, seed) would render different pixels (invalidates cached data)
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of the random scene distribution and of the rendered frames."""

    width: int = 224
    height: int = 224
    frames_per_scene: int = 32
    frame_rate: float = 10.0
    min_objects: int = 3
    max_objects: int = 7
    object_size: tuple[float, float] = (0.35, 0.75)  # largest extent, metres
    tumble_prob: float = 0.3  # probability of a random 3D orientation instead of upright + yaw
    room_half: tuple[float, float] = (3.0, 5.0)  # half side of the room, metres
    room_height: float = 3.0
    hfov_deg: tuple[float, float] = (55.0, 75.0)
    cam_radius: tuple[float, float] = (1.9, 2.8)
    cam_height: tuple[float, float] = (0.6, 1.7)
    sweep_deg: tuple[float, float] = (25.0, 80.0)  # azimuth travelled over one sequence
    photo_prob: float = 0.5  # probability that an object gets a photographic texture
    noise_std: float = 0.0  # additive Gaussian pixel noise (uint8 units); 0 = clean

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image size too small: {self.width}x{self.height}")
        if self.frames_per_scene < 1:
            raise ValueError("frames_per_scene must be >= 1")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )


@dataclass
class SceneSpec:
    """A sampled scene plus its camera (intrinsics and trajectory)."""

    scene: Scene
    K: np.ndarray
    trajectory: OrbitTrajectory
    index: int


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _yaw(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _room(
    rng: np.random.Generator, config: SceneConfig, n_tex: int
) -> tuple[list[SceneObject], float, float]:
    """Floor, ceiling and four walls (instance 0); returns them and the room's half sides."""
    lx, ly = rng.uniform(*config.room_half, size=2)
    hz = config.room_height
    objs: list[SceneObject] = []

    def bg(corner, eu, ev, tile) -> None:
        tex = int(rng.integers(0, n_tex))
        tint = tuple(rng.uniform(0.6, 1.0, 3))
        objs.append(
            SceneObject(
                class_id=-1,
                translation=np.zeros(3),
                mesh=quad(corner, eu, ev),
                texture=tex,
                tex_repeat=1.0 / tile,
                tint=tint,
            )
        )

    bg([-lx, -ly, 0], [2 * lx, 0, 0], [0, 2 * ly, 0], rng.uniform(0.6, 2.0))  # floor
    bg([-lx, -ly, hz], [2 * lx, 0, 0], [0, 2 * ly, 0], rng.uniform(1.0, 3.0))  # ceiling
    wall_tile = rng.uniform(0.8, 2.5)
    bg([lx, -ly, 0], [0, 2 * ly, 0], [0, 0, hz], wall_tile)
    bg([-lx, -ly, 0], [0, 2 * ly, 0], [0, 0, hz], wall_tile)
    bg([-lx, ly, 0], [2 * lx, 0, 0], [0, 0, hz], wall_tile)
    bg([-lx, -ly, 0], [2 * lx, 0, 0], [0, 0, hz], wall_tile)
    return objs, lx, ly


def _object_rotation(rng: np.random.Generator, config: SceneConfig, cls: int) -> np.ndarray:
    """Spheres and tumbled objects: any orientation; the rest: upright with a random yaw."""
    if cls == SPHERE_CLASS:
        return _random_rotation(rng)
    if rng.random() < config.tumble_prob:
        return _random_rotation(rng)
    return _yaw(rng.uniform(0, 2 * np.pi))


def _free_spot(
    rng: np.random.Generator, spread: float, rad: float, placed: list[tuple[float, float, float]]
) -> np.ndarray | None:
    """A floor position whose footprint clears every placed object, or None after 50 tries."""
    for _ in range(50):
        cand = rng.uniform(-spread, spread, 2)
        if all(math.hypot(cand[0] - px, cand[1] - py) > rad + pr + 0.05 for px, py, pr in placed):
            return cand
    return None


def _objects(
    rng: np.random.Generator, config: SceneConfig, n_tex: int, n_proc: int
) -> tuple[list[SceneObject], list[tuple[float, float, float]]]:
    """The textured objects resting on the floor (instances 1..N) and their ``(x, y, radius)`` footprints."""
    objs: list[SceneObject] = []
    n_obj = int(rng.integers(config.min_objects, config.max_objects + 1))
    placed: list[tuple[float, float, float]] = []  # (x, y, footprint radius)
    spread = 0.45 + 0.22 * n_obj
    for _ in range(n_obj):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        size = float(rng.uniform(*config.object_size))
        R = _object_rotation(rng, config, cls)
        rad = 0.5 * size * (math.sqrt(2.0) if cls != SPHERE_CLASS else 1.0)
        xy = _free_spot(rng, spread, rad, placed)
        if xy is None:
            continue
        placed.append((float(xy[0]), float(xy[1]), rad))
        if cls == SPHERE_CLASS:
            t = np.array([xy[0], xy[1], size / 2.0])
        else:
            v, _ = canonical_mesh(cls)
            zmin = float((size * v @ R.T)[:, 2].min())
            t = np.array([xy[0], xy[1], -zmin])
        if rng.random() < config.photo_prob:
            tex = int(rng.integers(n_proc, n_tex))
            tint = tuple(rng.uniform(0.85, 1.0, 3))
        else:
            tex = int(rng.integers(0, n_proc))
            tint = tuple(rng.uniform(0.7, 1.0, 3))
        objs.append(
            SceneObject(
                class_id=cls,
                translation=t,
                rotation=R,
                scale=size,
                instance=len(placed),
                texture=tex,
                tex_repeat=float(rng.uniform(1.0, 2.5)),
                tint=tint,
            )
        )
    return objs, placed


def _camera(
    rng: np.random.Generator,
    config: SceneConfig,
    placed: list[tuple[float, float, float]],
    lx: float,
    ly: float,
) -> tuple[np.ndarray, OrbitTrajectory]:
    """Intrinsics and an orbit around the objects that stays inside the room and outside every object."""
    K = intrinsics(config.width, config.height, float(rng.uniform(*config.hfov_deg)))
    cx = float(np.mean([p[0] for p in placed])) if placed else 0.0
    cy = float(np.mean([p[1] for p in placed])) if placed else 0.0
    r_max = min(lx, ly) - 0.4 - math.hypot(cx, cy)
    # keep the orbit outside every object (largest object distance from the centre + margin)
    far = max((math.hypot(px - cx, py - cy) + pr for px, py, pr in placed), default=0.0)
    radius = float(min(max(rng.uniform(*config.cam_radius), far + 0.6), max(r_max - 0.3, 1.2)))
    traj = OrbitTrajectory(
        center=(cx, cy, 0.25),
        radius=radius,
        height=float(rng.uniform(*config.cam_height)),
        angle0=float(rng.uniform(0, 2 * np.pi)),
        sweep=float(np.deg2rad(rng.uniform(*config.sweep_deg)) * rng.choice([-1.0, 1.0])),
        radius_amp=float(rng.uniform(0.0, 0.3)),
        height_amp=float(rng.uniform(0.0, 0.3)),
        phase=float(rng.uniform(0, 2 * np.pi)),
    )
    return K, traj


def sample_scene(config: SceneConfig, seed: int, index: int) -> SceneSpec:
    """Draw scene ``index`` of the distribution ``config`` with master seed ``seed``.

    The draws happen in a fixed order (room, objects, light, camera): changing it changes every scene.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    n_tex = n_textures()
    n_proc = len(PROCEDURAL_KINDS) * N_PROCEDURAL_PER_KIND
    room, lx, ly = _room(rng, config, n_tex)
    objs, placed = _objects(rng, config, n_tex, n_proc)
    # light from above, random azimuth
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.deg2rad(35), np.deg2rad(75))
    light = (math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el))
    scene = Scene(
        room + objs, light_dir=light, ambient=float(rng.uniform(0.25, 0.4)), sun=float(rng.uniform(0.4, 0.6))
    )
    K, traj = _camera(rng, config, placed, lx, ly)
    return SceneSpec(scene=scene, K=K, trajectory=traj, index=int(index))


class SceneGenerator:
    """Deterministic, picklable source of synthetic frames.

    * ``gen.frame(scene, i)`` renders frame ``i`` of scene ``scene`` (random access).
    * ``gen[k]`` is flat frame ``k`` = ``frame(k // frames_per_scene, k % frames_per_scene)``.
    * ``iter(gen)`` / ``gen.stream(worker_id, num_workers)`` are infinite iterators of frames, scene by
      scene; workers take disjoint scenes (scene ``worker_id + j * num_workers``).
    * ``gen.pair(scene, i, j)`` returns two frames of one scene (for correspondences).

    Equal ``(config, seed)`` give bit-identical frames in any process. The last few scenes are cached
    (their open3d structures are dropped when pickled, e.g. into DataLoader workers).

    ``backend``: ``"open3d"`` (:meth:`Scene.render`), ``"torch"`` (:mod:`torch_render` on ``device``,
    no open3d needed, the same images) or ``"auto"`` (open3d where it is installed, else torch).
    """

    def __init__(
        self,
        config: SceneConfig | None = None,
        seed: int = 0,
        cache_scenes: int = 2,
        *,
        backend: str = "auto",
        device: str = "cpu",
        **overrides,
    ):
        config = config or SceneConfig()
        if overrides:
            config = replace(config, **overrides)
        self.config = config
        self.seed = int(seed)
        self.cache_scenes = max(1, int(cache_scenes))
        if backend == "auto":
            backend = "open3d" if importlib.util.find_spec("open3d") is not None else "torch"
        if backend not in ("open3d", "torch"):
            raise ValueError(f"backend must be 'auto', 'open3d' or 'torch', got {backend!r}")
        self.backend = backend
        self.device = str(device)
        self._cache: OrderedDict[int, SceneSpec] = OrderedDict()
        self._packed: OrderedDict[int, object] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_packed"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SceneGenerator(seed={self.seed}, size={c.width}x{c.height}, "
            f"frames_per_scene={c.frames_per_scene}, backend={self.backend!r})"
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def scene(self, index: int) -> SceneSpec:
        """The sampled scene ``index`` (cached)."""
        if index < 0:
            raise ValueError(f"scene index must be >= 0, got {index}")
        spec = self._cache.get(index)
        if spec is None:
            spec = sample_scene(self.config, self.seed, index)
            self._cache[index] = spec
            while len(self._cache) > self.cache_scenes:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return spec

    def pose(self, scene_index: int, frame_index: int) -> np.ndarray:
        """``T_world_cam`` of a frame (no rendering)."""
        n = self.config.frames_per_scene
        tau = frame_index / (n - 1) if n > 1 else 0.0
        return self.scene(scene_index).trajectory.pose(tau)

    def frame(self, scene_index: int, frame_index: int) -> SynthFrame:
        """Render frame ``frame_index`` of scene ``scene_index``."""
        c = self.config
        if not 0 <= frame_index < c.frames_per_scene:
            raise IndexError(f"frame index {frame_index} outside 0..{c.frames_per_scene - 1}")
        spec = self.scene(scene_index)
        stamp = round(frame_index * 1e9 / c.frame_rate)
        meta = {"stamp_ns": stamp, "scene_index": scene_index, "frame_index": frame_index}
        T = self.pose(scene_index, frame_index)
        if self.backend == "torch":
            fr = self._render_torch(scene_index, spec, T, meta)
        else:
            fr = spec.scene.render(T, spec.K, c.width, c.height, **meta)
        if c.noise_std > 0:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, scene_index, frame_index, 7])
            noisy = fr.rgb.astype(np.float32) + rng.normal(0.0, c.noise_std, fr.rgb.shape)
            fr.rgb = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
        return fr

    def _render_torch(self, scene_index: int, spec: SceneSpec, T: np.ndarray, meta: dict) -> SynthFrame:
        import torch

        from dinov3_ros.synthetic.torch_pack import pack_scenes
        from dinov3_ros.synthetic.torch_render import render

        packed = self._packed.get(scene_index)
        if packed is None:
            packed = pack_scenes([spec], self.device)
            self._packed[scene_index] = packed
            while len(self._packed) > self.cache_scenes:
                self._packed.popitem(last=False)
        else:
            self._packed.move_to_end(scene_index)
        c = self.config
        dev = packed.device
        out = render(
            packed,
            torch.zeros(1, dtype=torch.long, device=dev),
            torch.from_numpy(T[None]).to(dev),
            torch.from_numpy(spec.K[None]).to(dev),
            c.height,
            c.width,
        )
        return SynthFrame(
            rgb=out.rgb[0].cpu().numpy(),
            depth=out.depth[0].cpu().numpy(),
            instances=out.instances[0].cpu().numpy(),
            normals=out.normals[0].cpu().numpy(),
            K=np.array(spec.K, np.float64),
            T_world_cam=np.array(T, np.float64),
            instance_classes=spec.scene.instance_classes.copy(),
            **meta,
        )

    def pair(self, scene_index: int, i: int, j: int) -> tuple[SynthFrame, SynthFrame]:
        """Two frames of one scene."""
        return self.frame(scene_index, i), self.frame(scene_index, j)

    def __getitem__(self, index: int) -> SynthFrame:
        if index < 0:
            raise IndexError("flat frame index must be >= 0")
        n = self.config.frames_per_scene
        return self.frame(index // n, index % n)

    def sequence(self, scene_index: int, n_frames: int | None = None) -> Iterator[SynthFrame]:
        """The frames of one scene in order."""
        n = self.config.frames_per_scene if n_frames is None else min(n_frames, self.config.frames_per_scene)
        for i in range(n):
            yield self.frame(scene_index, i)

    def stream(self, worker_id: int = 0, num_workers: int = 1, start_scene: int = 0) -> Iterator[SynthFrame]:
        """Infinite iterator over scenes ``start_scene + worker_id + j*num_workers``, all frames each."""
        if not 0 <= worker_id < num_workers:
            raise ValueError(f"worker_id {worker_id} not in 0..{num_workers - 1}")
        s = start_scene + worker_id
        while True:
            yield from self.sequence(s)
            s += num_workers

    def __iter__(self) -> Iterator[SynthFrame]:
        return self.stream()

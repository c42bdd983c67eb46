"""Feature models for evaluation: any backbone (``--weights``) behind one small interface.

``--weights`` values:

* ``default``: the shipped default model (registry entry ``default``), ``load_backbone("default")``;
* ``random:ARCH``: a randomly initialised ``ARCH`` with a fixed seed (the floor);
* a path: official or converted weights, ``load_backbone(path)``;
* ``noise:DIM``: label-independent random features (harness check: every score at chance);
* ``oracle``: ground truth instead of features (harness check: every score perfect), see ``runner``.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureModel(Protocol):
    """``model(images [B,H,W,3] uint8) -> (patch features [B,h,w,C] float32, cls [B,C] float32)``."""

    name: str
    patch_size: int

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class BackboneFeatures:
    """Last-layer, final-LayerNorm patch tokens and CLS of a ``dinov3_ros.models`` backbone."""

    def __init__(self, backbone, name: str, device: str = "cpu", batch_size: int = 16) -> None:
        import torch

        self.backbone = backbone.eval().to(device)
        self.name = name
        self.device = device
        self.batch_size = int(batch_size)
        self.patch_size = int(getattr(backbone, "patch_size", 16))
        mean = getattr(backbone, "norm_mean", None) or IMAGENET_MEAN
        std = getattr(backbone, "norm_std", None) or IMAGENET_STD
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [B,H,W,3], got {images.dtype} {images.shape}")
        B, H, W, _ = images.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {W}x{H} is not a multiple of the patch size {p}")
        patches, clss = [], []
        with torch.inference_mode():
            for i in range(0, B, self.batch_size):
                x = torch.from_numpy(images[i : i + self.batch_size]).permute(0, 3, 1, 2).float() / 255.0
                x = ((x - self._mean) / self._std).to(self.device)
                out = self.backbone.forward_features(x)
                pt = out["x_norm_patchtokens"].float().cpu().numpy()
                patches.append(pt.reshape(pt.shape[0], H // p, W // p, -1))
                clss.append(out["x_norm_clstoken"].float().cpu().numpy())
        return np.concatenate(patches).astype(np.float32), np.concatenate(clss).astype(np.float32)

    def depth_with_head(self, images: np.ndarray, head_path: str) -> np.ndarray:
        """Metric depth ``[B,H,W]`` from a trained head file (``dinov3_ros.heads.depth.load_head``) fed
        with ``get_intermediate_layers`` of the head's recorded ``meta['layers']``."""
        import torch

        from dinov3_ros.heads.depth import load_head

        head, meta = load_head(
            head_path, expect_embed_dim=int(getattr(self.backbone, "embed_dim", 0)) or None
        )
        head = head.to(self.device)
        images = np.asarray(images)
        H, W = images.shape[1:3]
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.from_numpy(images[i : i + self.batch_size]).permute(0, 3, 1, 2).float() / 255.0
                x = ((x - self._mean) / self._std).to(self.device)
                layers = self.backbone.get_intermediate_layers(
                    x, n=list(meta["layers"]), reshape=True, return_class_token=True, norm=True
                )
                d = head(list(layers), output_size=(H, W))
                out.append(d[:, 0].float().cpu().numpy())
        return np.concatenate(out)


class NoiseFeatures:
    """Random Gaussian features, a deterministic function of the image bytes but independent of any label."""

    def __init__(self, dim: int = 64, patch_size: int = 16, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"noise feature dimension must be >= 1, got {dim}")
        self.dim, self.patch_size, self.seed = int(dim), int(patch_size), int(seed)
        self.name = f"noise:{dim}"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        _, H, W, _ = images.shape
        p = self.patch_size
        patches, clss = [], []
        for img in images:
            h = int.from_bytes(hashlib.sha256(img.tobytes()).digest()[:8], "little")
            rng = np.random.default_rng([self.seed, h])
            patches.append(rng.standard_normal((H // p, W // p, self.dim), dtype=np.float32))
            clss.append(rng.standard_normal(self.dim, dtype=np.float32))
        return np.stack(patches), np.stack(clss)


def resolve_weights(spec: str, device: str = "cpu", seed: int = 0, arch: str | None = None) -> FeatureModel:
    """Turn a ``--weights`` value (see module doc; not ``oracle``) into a :class:`FeatureModel`.

    ``noise:DIM`` is eval's own harness check; every other value goes through the one weight resolver
    (``core.spec.WeightsSpec``, ``runtime.weights.load_backbone``) the node, the bag tool and export use.
    """
    if spec.startswith("noise:") or spec == "noise":
        dim = int(spec.split(":", 1)[1]) if ":" in spec else 64
        return NoiseFeatures(dim=dim, seed=seed)
    from dinov3_ros.core.spec import WeightsSpec
    from dinov3_ros.runtime.weights import load_backbone

    ws = WeightsSpec.parse(spec)
    if ws.kind == "file":
        ws.path()  # FileNotFoundError naming the file
    bb = load_backbone(arch, ws, seed=seed)
    name = str(ws) if ws.kind == "random" else f"{ws} ({getattr(bb, 'arch', '?')})"
    return BackboneFeatures(bb, name=name, device=device)

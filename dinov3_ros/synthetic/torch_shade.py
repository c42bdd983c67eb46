"""Texturing and shading of ray hits in torch: the float32 arithmetic of ``Scene._shade``, op for op.

Triplanar mapping in each surface's local frame (lon/lat on spheres), a mip level from the pixel
footprint, Lambert sun + head light + ambient, tint. The texture bank's mip pyramid is uploaded once
per device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dinov3_ros.synthetic.scene import MIP_LEVELS, _mip_pyramid
from dinov3_ros.synthetic.textures import TEXTURE_SIZE
from dinov3_ros.synthetic.torch_intersect import dot, rotate_t

_DEVICE_MIPS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def mip_tables(device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(texels [N] int32 = r | g << 8 | b << 16, offsets [T, MIP_LEVELS] int64)`` of the mip pyramid
    on ``device`` (built and uploaded once per device)."""
    key = str(torch.device(device))
    if key not in _DEVICE_MIPS:
        table, offsets = _mip_pyramid()
        t = table.astype(np.int32)
        packed = t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)
        _DEVICE_MIPS[key] = (torch.from_numpy(packed).to(device), torch.from_numpy(offsets).to(device))
    return _DEVICE_MIPS[key]


def _const(x: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d float32 tensor on ``like``'s device (a true division by it rounds like numpy's)."""
    return torch.tensor(x, dtype=torch.float32, device=like.device)


def tex_coords(
    pl: torch.Tensor, nl: torch.Tensor, spherical: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texture coordinates (before repeats): triplanar by the dominant local normal axis, or lon/lat."""
    ax, ay, az = nl[0].abs(), nl[1].abs(), nl[2].abs()
    # argmax over (|x|, |y|, |z|), the first on ties
    a = torch.where((ax >= ay) & (ax >= az), 0, torch.where(ay >= az, 1, 2))
    uu = torch.where(a == 0, pl[1], pl[0])
    vv = torch.where(a == 2, pl[1], -pl[2])  # texture rows run downwards
    if bool(spherical.any()):
        r = torch.sqrt(pl[0] * pl[0] + pl[1] * pl[1] + pl[2] * pl[2]) + 1e-12
        us = torch.atan2(pl[1], pl[0]) / _const(2.0 * math.pi, pl) + 0.5
        vs = torch.acos(torch.clamp(pl[2] / r, -1.0, 1.0)) / _const(math.pi, pl)
        uu, vv = torch.where(spherical, us, uu), torch.where(spherical, vs, vv)
    return uu, vv


def shade(
    geo: dict[str, torch.Tensor],
    q: torch.Tensor,
    t: torch.Tensor,
    d: torch.Tensor,
    n: torch.Tensor,
    lit: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Linear RGB ``[3,N]`` float32 of N hits.

    ``geo``: the hit surfaces' ``R [3,3,N]``, ``inv_s``, ``tex``, ``rep``, ``m_per_rep``, ``tint [3,N]``,
    ``spherical``; ``q [3,N]``: hit point minus the surface origin (world axes); ``t``: distance;
    ``d [3,N]``: ray direction (world); ``n [3,N]``: world normal facing the camera; ``lit``: per hit
    ``dir [3,N]``, ``ambient``, ``sun``, ``head`` and the focal length ``fx``.
    """
    R = geo["R"]
    pl = rotate_t(R, q) * geo["inv_s"]
    nl = rotate_t(R, n)
    uu, vv = tex_coords(pl, nl, geo["spherical"])
    rep = geo["rep"]
    uu = uu * rep
    vv = vv * rep
    dn = torch.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    cos = dot(n, d).abs() / dn
    m_per_px = t * dn / lit["fx"] / torch.clamp(cos, min=0.3)
    texels_per_px = m_per_px / geo["m_per_rep"] * TEXTURE_SIZE
    lvl = torch.clamp(torch.round(torch.log2(torch.clamp(texels_per_px, min=1e-6))), 0, MIP_LEVELS - 1).long()
    size = TEXTURE_SIZE >> lvl
    x = torch.minimum(((uu - torch.floor(uu)) * size).long(), size - 1)
    y = torch.minimum(((vv - torch.floor(vv)) * size).long(), size - 1)
    table, offsets = mip_tables(q.device)
    texel = table[offsets[geo["tex"], lvl] + y * size + x]
    lam = torch.clamp(dot(n, lit["dir"]), 0.0, 1.0)
    s = lit["ambient"] + lit["sun"] * lam + lit["head"] * cos
    tint = geo["tint"]
    return torch.stack([((texel >> (8 * k)) & 255).float() * (1.0 / 255.0) * tint[k] * s for k in range(3)])


def to_uint8(color: torch.Tensor) -> torch.Tensor:
    """``clip(color * 255 + 0.5, 0, 255)`` truncated to uint8."""
    return torch.clamp(color * 255.0 + 0.5, 0, 255).to(torch.uint8)

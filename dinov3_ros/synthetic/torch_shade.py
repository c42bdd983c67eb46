"""Texturing and shading of ray hits in torch: the float32 arithmetic of ``Scene._shade``, op for op.

Triplanar mapping in each surface's local frame (lon/lat on spheres), a mip level from the pixel
footprint, Lambert sun + head light + ambient, tint. The texture bank's mip pyramid is uploaded once
per device.
"""

from __future__ import annotations

import math

import torch

from dinov3_ros.synthetic.packing import MAP_SPHERICAL
from dinov3_ros.synthetic.scene import MIP_LEVELS, _mip_pyramid
from dinov3_ros.synthetic.textures import TEXTURE_SIZE
from dinov3_ros.synthetic.torch_intersect import dot

_DEVICE_MIPS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def mip_tables(device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(texels [N,3] uint8, offsets [T, MIP_LEVELS] int64)`` of the mip pyramid on ``device`` (cached)."""
    key = str(torch.device(device))
    if key not in _DEVICE_MIPS:
        table, offsets = _mip_pyramid()
        _DEVICE_MIPS[key] = (torch.from_numpy(table).to(device), torch.from_numpy(offsets).to(device))
    return _DEVICE_MIPS[key]


def _const(x: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d float32 tensor on ``like``'s device (a true division by it rounds like numpy's)."""
    return torch.tensor(x, dtype=torch.float32, device=like.device)


def _local(q: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``x_local_j = sum_i x_i R[i, j]``, summed left to right as ``Scene._shade`` does."""
    cols = [q[:, 0] * R[:, 0, j] + q[:, 1] * R[:, 1, j] + q[:, 2] * R[:, 2, j] for j in range(3)]
    return torch.stack(cols, 1)


def tex_coords(
    pl: torch.Tensor, nl: torch.Tensor, spherical: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texture coordinates (before repeats): triplanar by the dominant local normal axis, or lon/lat."""
    a = nl.abs().argmax(1)
    uu = torch.where(a == 0, pl[:, 1], pl[:, 0])
    vv = torch.where(a == 2, pl[:, 1], -pl[:, 2])  # texture rows run downwards
    r = torch.sqrt(pl[:, 0] * pl[:, 0] + pl[:, 1] * pl[:, 1] + pl[:, 2] * pl[:, 2]) + 1e-12
    us = torch.atan2(pl[:, 1], pl[:, 0]) / _const(2.0 * math.pi, pl) + 0.5
    vs = torch.acos(torch.clamp(pl[:, 2] / r, -1.0, 1.0)) / _const(math.pi, pl)
    return torch.where(spherical, us, uu), torch.where(spherical, vs, vv)


def shade(
    geo: dict[str, torch.Tensor],
    q: torch.Tensor,
    t: torch.Tensor,
    d: torch.Tensor,
    n: torch.Tensor,
    fx: torch.Tensor,
    light: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Linear RGB ``[N,3]`` float32 of hits.

    ``geo``: per-hit slot rows (R, inv_s, tex, rep, m_per_rep, tint, map); ``q``: hit point minus the
    surface origin (world axes); ``t``: distance; ``d``: ray direction (world); ``n``: world normal
    facing the camera; ``fx``: focal length per hit; ``light``: per-hit light, ambient, sun, head.
    """
    R = geo["R"]
    pl = _local(q, R) * geo["inv_s"][:, None]
    nl = _local(n, R)
    uu, vv = tex_coords(pl, nl, geo["map"] == MAP_SPHERICAL)
    rep = geo["rep"]
    uu = uu * rep
    vv = vv * rep
    dn = torch.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])
    cos = dot(n, d).abs() / dn
    m_per_px = t * dn / fx / torch.clamp(cos, min=0.3)
    texels_per_px = m_per_px / geo["m_per_rep"] * TEXTURE_SIZE
    lvl = torch.clamp(torch.round(torch.log2(torch.clamp(texels_per_px, min=1e-6))), 0, MIP_LEVELS - 1).long()
    size = TEXTURE_SIZE >> lvl
    x = torch.minimum(((uu - torch.floor(uu)) * size).long(), size - 1)
    y = torch.minimum(((vv - torch.floor(vv)) * size).long(), size - 1)
    table, offsets = mip_tables(q.device)
    albedo = table[offsets[geo["tex"], lvl] + y * size + x].float() * (1.0 / 255.0)
    lam = torch.clamp(dot(n, light["dir"]), 0.0, 1.0)
    s = light["ambient"] + light["sun"] * lam + light["head"] * cos
    return albedo * geo["tint"] * s[:, None]


def to_uint8(color: torch.Tensor) -> torch.Tensor:
    """``clip(color * 255 + 0.5, 0, 255)`` truncated to uint8."""
    return torch.clamp(color * 255.0 + 0.5, 0, 255).to(torch.uint8)

"""DINO / iBOT projection head: 3-layer GELU MLP -> L2-normalised bottleneck -> bias-free prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """``MLP(in → hidden → hidden → bottleneck)`` with GELU (no BN), L2 normalisation, then
    ``last_layer = Linear(bottleneck, out_dim, bias=False)`` (no weight norm, as in DINOv3).

    ``norm_last_layer=True`` uses unit-norm prototype rows (the DINOv1/v2 weight-normalised layer), so
    logits are cosines in [-1, 1]. Short runs need it: with raw std-0.02 prototypes the logits start near
    zero and a few hundred iterations settle on uniform outputs (loss = log K).

    ``forward(x, no_last_layer=True)`` returns the normalised bottleneck (what a distillation teacher
    all-gathers); ``forward(z, only_last_layer=True)`` applies just the prototypes.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead nlayers must be >= 1, got {nlayers}")
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim
        self.norm_last_layer = bool(norm_last_layer)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, no_last_layer: bool = False, only_last_layer: bool = False) -> Tensor:
        if not only_last_layer:
            x = self.mlp(x)
            eps = 1e-6 if x.dtype == torch.float16 else 1e-12
            x = F.normalize(x, dim=-1, p=2, eps=eps)
        if not no_last_layer:
            if self.norm_last_layer:
                x = F.linear(x, F.normalize(self.last_layer.weight, dim=1))
            else:
                x = self.last_layer(x)
        return x

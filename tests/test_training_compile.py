"""Per-block ``torch.compile`` (``train.compile``) keeps the backbone's outputs, stochastic depth included."""

from __future__ import annotations

import copy

import torch

from dinov3_ros.models import build_backbone
from training.parallel import compile_blocks, unit_modules


def _forward(model: torch.nn.Module, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    torch.manual_seed(3)
    return [model.forward_features(torch.randn(b, 3, s, s))["x_norm_patchtokens"] for b, s in shapes]


def test_compiled_blocks_match_eager_across_crop_shapes_with_stochastic_depth():
    torch.manual_seed(0)
    eager = build_backbone("vitt16", depth=2, drop_path_rate=0.25, layerscale_init=1.0).train()
    compiled = copy.deepcopy(eager)
    compile_blocks([compiled], backend="eager")  # dynamo's tracing and guards without a C++ toolchain
    assert all(getattr(u, "_compiled_call_impl", None) is not None for u in unit_modules(compiled))
    shapes = [(8, 32), (16, 16), (8, 32), (12, 16)]  # global and local crops of different batch sizes
    for a, b in zip(_forward(eager, shapes), _forward(compiled, shapes)):
        torch.testing.assert_close(a, b)
    torch.manual_seed(4)
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(5)
    out_a = eager.forward_features(x)["x_norm_patchtokens"]
    torch.manual_seed(6)  # another draw of the dropped samples: stochastic depth is on, so outputs differ
    out_b = eager.forward_features(x)["x_norm_patchtokens"]
    assert not torch.allclose(out_a, out_b)

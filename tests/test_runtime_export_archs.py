"""Every architecture exports (standard TensorRT-checked graph, fixed size) and its ONNX Runtime output
equals torch: ViT-S, S+, B, L, L+, H+ and 7B at reduced depth, ConvNeXt-T at reduced depth.

Random models whose every block matters; each architecture's parity check has negative controls (a bug
planted in the torch reference must fail the same bound).
"""

from __future__ import annotations

import pytest
import torch
from planted_bugs import BUGS, model_bug

from dinov3_ros.models.testing import random_backbone
from dinov3_ros.runtime.engine import create_engine
from dinov3_ros.runtime.export import export_onnx
from dinov3_ros.runtime.ort_backend import read_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = [
    ("vits16", {"depth": 2}),
    ("vits16plus", {"depth": 2}),
    ("vitb16", {"depth": 2}),
    ("vitl16", {"depth": 1}),
    ("vitl16plus", {"depth": 1}),
    ("vith16plus", {"depth": 1}),
    pytest.param("vit7b16", {"depth": 1}, marks=pytest.mark.slow, id="vit7b16"),  # 680 MB graph
    ("convnext_tiny", {"depths": (1, 1, 1, 1)}),
]


def _parity(out: torch.Tensor, ref: torch.Tensor) -> bool:
    """max-abs 1e-3 and worst-token cosine 0.9999, as in test_runtime_export."""
    a, b = out.reshape(-1, out.shape[-1]).float(), ref.reshape(-1, ref.shape[-1]).float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
    return (a - b).abs().max().item() <= 1e-3 and cos >= 0.9999


@pytest.mark.parametrize(("arch", "kw"), CASES)
def test_export_matches_torch(arch, kw, tmp_path):
    bb = random_backbone(arch, seed=0, **kw)
    size = (64, 96) if arch.startswith("convnext") else (32, 48)
    path, findings = export_onnx(bb, tmp_path / f"{arch}.onnx", resolution=size)
    assert not [f for f in findings if f.severity == "error"], findings
    meta = read_metadata(path)
    assert meta["arch"] == arch and meta["embed_dim"] == bb.embed_dim and meta["input_size"] == list(size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    out = create_engine("onnxruntime", onnx_path=path, threads=2).run(x)
    with torch.no_grad():
        ref = bb.forward_features(x)
    assert _parity(out["patch_tokens"], ref["x_norm_patchtokens"])
    assert _parity(out["cls"], ref["x_norm_clstoken"])
    # negative controls: the same bound fails against a reference with a planted bug
    bugs = BUGS if arch.startswith("vit") else ("relu", "drop_block", "norm_affine")
    for bug in bugs:
        with model_bug(bug, bb), torch.no_grad():
            bad = bb.forward_features(x)["x_norm_patchtokens"]
        assert not _parity(out["patch_tokens"], bad), bug

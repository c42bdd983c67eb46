"""Heads on real backbone outputs (contract of dinov3_ros.models): shapes, token handling, head files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_ros.models.testing import random_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbone():
    return random_backbone("vitt16", seed=0, depth=4)


def test_dpt_and_linear_heads_on_intermediate_layers(backbone, tmp_path):
    from dinov3_ros.heads.depth import DPTHead, LinearDepthHead, load_head, save_head

    x = torch.randn(1, 3, 64, 96)
    D = backbone.embed_dim
    with torch.no_grad():
        layers = backbone.get_intermediate_layers(x, n=[0, 1, 2, 3], reshape=True, return_class_token=True)
        assert layers[0][0].shape == (1, D, 4, 6)
        dpt = DPTHead(
            D, features=32, readout="project", n_bins=32, min_depth=0.1, max_depth=5.0, layers=[0, 1, 2, 3]
        ).eval()
        d = dpt(layers)
        assert d.shape == (1, 1, 64, 96) and d.min() >= 0.1 and d.max() <= 5.0
        last = backbone.get_intermediate_layers(x, n=1, reshape=True)
        lin = LinearDepthHead(D, n_bins=32).eval()
        assert lin(last, output_size=(64, 96)).shape == (1, 1, 64, 96)
    meta = {
        "arch": "vitt16",
        "normalization": {"mean": list(backbone.norm_mean), "std": list(backbone.norm_std)},
        "input_size": [64, 96],
    }
    save_head(tmp_path / "dpt.pt", dpt, meta)
    head, m = load_head(tmp_path / "dpt.pt", expect_arch="vitt16", expect_embed_dim=D)
    assert m["layers"] == [0, 1, 2, 3] and m["embed_dim"] == D
    with torch.no_grad():
        assert torch.equal(head(layers), d)


def test_tokencut_and_pca_on_patch_tokens_only(backbone):
    from dinov3_ros.heads.pca import PCAView
    from dinov3_ros.heads.tokencut import tokencut

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = backbone.forward_features(x)
    patches = out["x_norm_patchtokens"][0]  # [HW, D], CLS and registers already excluded
    h, w = 4, 6
    res = tokencut(patches, grid=(h, w))
    assert res.mask.shape == (h, w) and res.mask.any()
    every = out["x_prenorm"][0]  # [1 + R + HW, D]
    assert every.shape[0] == 1 + backbone.n_storage_tokens + h * w
    with pytest.raises(ValueError, match="register"):
        tokencut(every, grid=(h, w))
    rgb = PCAView()(patches.reshape(h, w, -1), size=(64, 96))
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8

"""``random_backbone``: seeded weights whose every block changes the output by more than MIN_BLOCK_EFFECT.

The default init (LayerScale 1e-5) is the counter-example: its blocks change the output by ~1e-5, which
is why equivalence tests use these models (a dropped block or a wrong activation must show).
"""

from __future__ import annotations

import pytest
import torch

from dinov3_ros.models import build_backbone
from dinov3_ros.models.testing import MIN_BLOCK_EFFECT, block_effects, random_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# every architecture; ViTs at full depth where that stays quick, the others at reduced depth
CASES = [
    ("vitt16", {}),
    ("vits16", {}),
    ("vits16plus", {}),
    ("vitb16", {"depth": 6}),
    ("vitl16", {"depth": 4}),
    ("vitl16plus", {"depth": 3}),
    ("vith16plus", {"depth": 3}),
    ("vit7b16", {"depth": 1}),
    ("convnext_tiny", {}),
    ("convnext_small", {"depths": (1, 1, 3, 1)}),
]


def _x(size=(32, 48)) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("arch", "kw"), CASES, ids=[a for a, _ in CASES])
def test_every_block_matters(arch, kw):
    m = random_backbone(arch, seed=0, **kw)
    x = _x((64, 64) if arch.startswith("convnext") else (32, 48))
    dropped = block_effects(m, x, "drop")
    assert min(dropped) > MIN_BLOCK_EFFECT, dropped
    if not arch.startswith("vit7b"):  # redrawing copies a block: 200M parameters for the 7B
        redrawn = block_effects(m, x, "redraw")
        assert min(redrawn) > MIN_BLOCK_EFFECT, redrawn


@pytest.mark.slow
def test_every_block_matters_at_full_vitl_depth():
    """Later blocks of a deep model matter least (the residual stream grows): 24 blocks still pass."""
    m = random_backbone("vitl16", seed=0)
    assert len(m.blocks) == 24
    dropped = block_effects(m, _x((32, 32)), "drop")
    assert min(dropped) > MIN_BLOCK_EFFECT, dropped


def test_default_init_blocks_do_not_matter():
    """The counter-example: with the reference init every block is the identity to ~1e-5."""
    torch.manual_seed(0)
    m = build_backbone("vitt16", depth=4)
    assert max(block_effects(m, _x(), "drop")) < 1e-3


def test_constant_layerscale_floor():
    """``layerscale_init=1.0``: every gamma is 1, every other parameter is the default draw."""
    a = random_backbone("vitt16", seed=3, depth=2)
    b = random_backbone("vitt16", seed=3, depth=2, layerscale_init=1.0)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if k.endswith("gamma"):
            assert torch.equal(sb[k], torch.ones_like(sb[k])), k
            assert not torch.equal(sa[k], sb[k])
        else:
            assert torch.equal(sa[k], sb[k]), k
    assert min(block_effects(b, _x(), "drop")) > MIN_BLOCK_EFFECT
    c = random_backbone("convnext_tiny", seed=3, depths=(1, 1, 1, 1), layerscale_init=1.0)
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in c.named_parameters() if n.endswith("gamma"))


def test_seeded_and_independent_of_global_rng():
    torch.manual_seed(123)
    a = random_backbone("vitt16", seed=7, depth=2).state_dict()
    torch.manual_seed(456)
    torch.rand(10)
    b = random_backbone("vitt16", seed=7, depth=2).state_dict()
    c = random_backbone("vitt16", seed=8, depth=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    differ = [k for k in a if not torch.equal(a[k], c[k])]
    # every parameter is redrawn; buffers (RoPE periods, qkv bias mask) are deterministic
    assert set(differ) == {n for n, _ in random_backbone("vitt16", seed=8, depth=2).named_parameters()}


def test_weights_are_well_formed():
    """Norm weights near 1 (also ConvNeXt's downsampling norms), LayerScale in U(0.2, 1), the qkv mask set."""
    m = random_backbone("convnext_tiny", seed=0, depths=(1, 1, 1, 1))
    ln = [mod.weight.detach() for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert len(ln) == 9 and all(0.5 < float(w.mean()) < 1.5 for w in ln)
    v = random_backbone("vitt16", seed=0, depth=2)
    g = torch.cat([p.detach() for n, p in v.named_parameters() if n.endswith("gamma")])
    assert 0.2 <= float(g.min()) and float(g.max()) <= 1.0 and float(g.std()) > 0.1
    D = v.embed_dim
    mask = v.blocks[0].attn.qkv.bias_mask
    assert mask[:D].eq(1).all() and mask[D : 2 * D].eq(0).all() and mask[2 * D :].eq(1).all()
    assert torch.isfinite(v.rope_embed.periods).all() and not v.training


def test_block_effects_restores_the_model():
    m = random_backbone("vitt16", seed=0, depth=2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    blocks = list(m.blocks)
    block_effects(m, _x(), "redraw")
    block_effects(m, _x(), "drop")
    assert list(m.blocks) == blocks
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with pytest.raises(ValueError, match="drop"):
        block_effects(m, _x(), "shuffle")

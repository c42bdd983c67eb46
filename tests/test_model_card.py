"""The model card's targets hold in the shipped model's evaluation records, and the card quotes them.

``models/default/provenance/eval_cpu_*.json`` are what ``dinov3-ros eval`` wrote for the shipped model
on the held-out test scenes; the card's bold cells are read from them. A target that stops holding, a
record made with other settings than the pipeline's defaults, or a card that quotes other numbers than
the records fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinov3_ros.core.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
PROV = ROOT / "models" / "default" / "provenance"
CARD = (ROOT / "models" / "README.md").read_text()
SIZES = ("224", "640")
TEST_SEED = 100003


def _summaries(name: str) -> dict[str, dict]:
    """``model -> summary`` of one record, checked to be on the test scenes."""
    rec = json.loads((PROV / name).read_text())
    out = {}
    for r in rec["results"]:
        assert r["data_meta"]["seed"] == TEST_SEED, name
        out[r["model"]] = r
    return out


def _is_default(model: str) -> bool:
    """``default`` or the shipped file by path (records made before the model landed in ``models/``)."""
    return model.startswith("default ") or "/dinov3_vits16_dinov3ros.pth " in model


def _default(name: str) -> dict:
    (r,) = [r for m, r in _summaries(name).items() if _is_default(m)]
    return r


def _quoted(value: float) -> bool:
    return f"{value:.3f}" in CARD


@pytest.mark.parametrize("size", SIZES)
def test_targets_hold_and_the_card_quotes_them(size):
    head = _default(f"eval_cpu_head_{size}.json")["summary"]
    corr = _default(f"eval_cpu_correspondence_{size}.json")
    cut = _default(f"eval_cpu_objects_guided_{size}.json")["summary"]
    probe = _default(f"eval_cpu_{size}.json")["summary"]
    assert corr["matcher"] == "heads" and corr["match_unrefined"] == PipelineConfig().match_unrefined
    assert cut and _default(f"eval_cpu_objects_guided_{size}.json")["options"]["mask_refine"] == "guided"
    figures = {
        "depth AbsRel": (head["depth.abs_rel"], head["depth.abs_rel"] <= 0.12),
        "depth delta1": (head["depth.delta1"], head["depth.delta1"] >= 0.85),
        "recall@4px": (corr["summary"]["corr.recall@4px"], corr["summary"]["corr.recall@4px"] >= 0.5),
        "TokenCut IoU": (cut["tokencut.iou"], cut["tokencut.iou"] >= 0.45),
        "CorLoc-any": (cut["tokencut.corloc_any"], cut["tokencut.corloc_any"] >= 0.6),
        "probe linear": (probe["probe.linear_acc"], probe["probe.linear_acc"] >= 0.8),
    }
    for what, (value, met) in figures.items():
        assert met, f"{what} {value:.3f} misses its target at {size}"
        assert _quoted(value), f"the card does not quote {what} {value:.3f} at {size}"


@pytest.mark.parametrize("size", SIZES)
def test_the_pipeline_matcher_is_far_above_every_floor(size):
    runs = _summaries(f"eval_cpu_correspondence_{size}.json")
    model = _default(f"eval_cpu_correspondence_{size}.json")["summary"]["corr.recall@4px"]
    floors = {m: r["summary"]["corr.recall@4px"] for m, r in runs.items() if not _is_default(m)}
    assert set(floors) == {"random:vits16", "random-ls1:vits16", "pixels", "colorhist:4"}
    assert all(model > 2 * f for f in floors.values()), (model, floors)
    assert all(_quoted(f) for f in floors.values())

"""``benchmarks/jetson_budget.py``: its projection model, and its whole run on the CPU with a tiny model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def jb():
    spec = importlib.util.spec_from_file_location("jetson_budget", ROOT / "benchmarks" / "jetson_budget.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["jetson_budget"] = mod
    spec.loader.exec_module(mod)
    return mod


def _entry(jb, host_infer=1.0, host_heads=4.0, heads_gflop=0.0, heads_mb=0.0, kernels=100, syncs=5):
    roof = {t: (heads_mb * 1e6 / (jb.BW_EFF * r["bw"])) * 1e3 for t, r in jb.TARGETS.items()}
    zero = dict.fromkeys(jb.TARGETS, 0.0)
    return {
        "count": {
            "infer": {"roofline_ms": zero, "ops": 0},
            "heads": {"roofline_ms": roof, "ops": kernels, "gflop_by_dtype": {"float32": heads_gflop}},
            "host_cpu_ms": {"infer_thread": host_infer, "heads_thread": host_heads},
        },
        "profile": {"kernels": kernels + 200, "host_syncs": syncs},
    }


def test_projection_model_by_hand(jb):
    """A ViT-S/16 at 480x640 (78 GFLOP) as a TensorRT FP16 engine at 40% of 42 TFLOP/s: 4.64 ms on AGX
    Orin (jetson.md's estimate); host ms scale by the per-thread factor; kernels and syncs add fixed costs."""
    engine = {"count": {"gflop_by_dtype": {"float16": 78.0}, "roofline_ms": dict.fromkeys(jb.TARGETS, 0.0)}}
    engine["kernels"] = 200
    p = jb.project(_entry(jb, heads_mb=20.0), engine)
    agx = p["AGX Orin 64GB"]
    assert (
        agx["engine_trt_fp16_ms"]
        == pytest.approx(78e9 / (0.4 * 42e12) * 1e3)
        == pytest.approx(4.643, abs=1e-3)
    )
    assert agx["infer_host_ms"] == pytest.approx(2.75)
    assert agx["heads_host_ms"] == pytest.approx(4.0 * 2.75 + 5 * jb.SYNC_US / 1e3)
    mem = 20e6 / (0.6 * 204.8e9) * 1e3
    assert agx["heads_gpu_ms"] == pytest.approx(mem + 100 * jb.KERNEL_US / 1e3)
    gpu = agx["engine_trt_fp16_ms"] + agx["heads_gpu_ms"]
    assert agx["latency_ms"] == pytest.approx(agx["infer_host_ms"] + gpu + agx["heads_host_ms"])
    assert agx["throughput_hz"] == pytest.approx(1e3 / max(gpu, agx["infer_host_ms"], agx["heads_host_ms"]))
    nano = p["Orin Nano 8GB (Super)"]
    assert nano["infer_host_ms"] == pytest.approx(2.75 * 2.2 / 1.7)  # slower cores, slower host
    assert nano["latency_ms"] > agx["latency_ms"]


def test_float64_matmul_is_priced_at_the_fp64_rate(jb):
    rates = jb.TARGETS["AGX Orin 64GB"]
    assert jb._peak(rates, "float64") == 0.08e12 and jb._peak(rates, "float16") == 42e12
    assert jb._peak(rates, "float32") == 5.3e12


def test_budget_runs_on_cpu_with_a_tiny_model(jb, tmp_path):
    out = tmp_path / "jb.json"
    args = ["--device", "cpu", "--weights", "random:vitt16", "--resolution", "64x80", "--frames", "1"]
    args += ["--time-frames", "1", "--warmup", "1", "--sets", "all", "--out", str(out)]
    assert jb.main(args) == 0
    res = json.loads(out.read_text())
    assert res["engine"]["count"]["gflop_by_dtype"]["float32"] > 0.1  # the network's matmuls were counted
    e = res["sets"]["all"]
    core = {"features", "features_pca", "depth", "points", "matches", "objects", "debug"}
    assert set(e["outputs"]) == set(jb.OUTPUTS) and core <= set(e["outputs"])  # every registered output
    for stage in ("infer", "heads"):
        assert e["count"][stage]["float64_ops"] == {}
        assert e["count"][stage]["ops"] > 0
    assert e["count"]["host_cpu_ms"]["heads_thread"] > 0 and e["wall"]["n"] == 1
    assert set(e["projection"]) == set(jb.TARGETS)
    for t in jb.TARGETS:
        p = e["projection"][t]
        assert p["latency_ms"] > p["engine_trt_fp16_ms"] > 0 and p["throughput_hz"] > 0
    assert res["model"]["engine_eff"] == 0.4 and "jetson_budget.py" in res["command"]
    assert res["host"]["blocking_sync"] is False  # no CUDA device: CUDA's waits are not involved


def test_output_sets_take_each_all_and_names(jb):
    sets = jb._output_sets("objects,all")
    assert sets == [("objects", {"objects"}), ("all", set(jb.OUTPUTS))]
    assert len(jb._output_sets("each")) == len(jb.OUTPUTS)
    with pytest.raises(SystemExit, match="unknown 'object'"):
        jb._output_sets("object")

"""Every option of every ``dinov3-ros`` subcommand has help text; ``bench`` says what it does not measure."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import torch

from dinov3_ros.cli import SUBCOMMANDS


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_has_help(name: str):
    p = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(p)
    missing = [a.option_strings or [a.dest] for a in p._actions if not a.help]
    assert not missing, f"dinov3-ros {name}: options without help: {missing}"


def test_bench_names_what_it_cannot_measure():
    from dinov3_ros.runtime.bench import not_measured

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not_measured("onnxruntime", "int8", cpu) is None  # int8 is measured on CPU
    assert not_measured("onnxruntime", "fp32", cpu) is None
    assert "int8" in not_measured("torch", "int8", cpu)
    assert "CPU" in not_measured("onnxruntime", "int8", cuda)
    assert not_measured("tensorrt", "fp16", cuda) is None


def test_bench_int8_runs_on_cpu(tmp_path, capsys):
    from dinov3_ros.cli import main

    out = tmp_path / "b.json"
    argv = ["bench", "--arch", "vitt16", "--backends", "torch,onnxruntime", "--precisions", "int8"]
    argv += ["--resolutions", "32x32", "--iters", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "onnxruntime" in cap.out and "int8" in cap.out  # measured, in the table
    assert "not measured: torch/int8" in cap.err


def test_bench_refuses_unknown_precision(tmp_path):
    from dinov3_ros.cli import main

    argv = [
        "bench",
        "--arch",
        "vitt16",
        "--precisions",
        "int4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(argv) == 2


def test_run_remaps_topics_of_its_nodes():
    """``dinov3-ros run --remap`` gives rclpy the remapping rules it applies to the nodes' topics."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    from dinov3_ros.ros.run import ros_arguments

    args = ros_arguments(Path("p.yaml"), ["device:=cpu"], ["image:=/camera/color/image_raw"])
    assert args == [
        "--ros-args",
        "--params-file",
        "p.yaml",
        "-p",
        "device:=cpu",
        "-r",
        "image:=/camera/color/image_raw",
    ]
    ctx = Context()
    rclpy.init(args=["dinov3-ros", "--ros-args", *args[3:5], *args[5:]], context=ctx)
    try:
        node = Node("remap_check", context=ctx)
        assert node.resolve_topic_name("image") == "/camera/color/image_raw"
        assert node.resolve_topic_name("front/image") == "/front/image"  # only the named topic moves
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_eval_prints_progress_while_a_model_is_evaluated(capsys):
    import time

    from dinov3_ros.eval.cli import _ticker

    seen = ""
    with _ticker("  random:vitt16", every_s=0.01):
        deadline = time.monotonic() + 60
        while "random:vitt16:" not in seen and time.monotonic() < deadline:
            seen += capsys.readouterr().out
    assert "  random:vitt16: 0 s ..." in seen

"""``dinov3-ros process --resume`` trusts nothing in the partial run: no pickle is ever loaded (a planted
payload never runs), and a changed model (by content), input or output set is refused clearly."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from dinov3_ros.cli import main as cli_main
from dinov3_ros.offline import process as proc
from dinov3_ros.offline.bagout import JOURNAL

REPO = Path(__file__).resolve().parent.parent
TS = get_typestore(Stores.LATEST)
W = H = 32
MODEL = ["--resolution", "32x32", "--device", "cpu", "--no-progress"]


def make_bag(path: Path, n: int = 6, seed: int = 0) -> Path:
    Image = TS.types["sensor_msgs/msg/Image"]
    Header, Time = TS.types["std_msgs/msg/Header"], TS.types["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(seed)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c = w.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        for i in range(n):
            t = 1_000_000_000 + i * 100_000_000
            img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            hdr = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam")
            msg = Image(
                header=hdr, height=H, width=W, encoding="rgb8", is_bigendian=0, step=W * 3, data=img.ravel()
            )
            w.write(c, t, TS.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    return path


class _Payload:
    """Unpickling this creates ``marker`` - what a hostile state file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _killed_run(src: Path, out: Path, args: list[str], checkpoints: int) -> Path:
    """A run killed (SIGKILL) once its journal holds ``checkpoints`` checkpoints; returns OUT.partial."""
    cmd = [sys.executable, "-m", "dinov3_ros.cli", "process", str(src), "--out", str(out), *args, *MODEL]
    cmd += ["--weights", "random:vitt16"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = out.with_name(out.name + ".partial") / JOURNAL
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= checkpoints + 1:
            break
        time.sleep(0.02)
    assert p.poll() is None, p.stderr.read().decode()[-2000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    return journal.parent


def test_planted_pickle_payload_is_never_executed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    src = make_bag(tmp_path / "in", n=40)
    out = tmp_path / "out"
    args = ["--outputs", "features_pca,matches,objects", "--batch-size", "2", "--checkpoint-every", "4"]
    work = _killed_run(src, out, args, 2)
    states = sorted(work.glob("state-*"))
    assert states and all(f.suffix in (".json", ".npz") for f in states), states
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    for f in states:
        f.write_bytes(payload)
    (work / "state-000000.pkl").write_bytes(payload)  # the old format's name, too
    loads: list[str] = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: loads.append("loads"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: loads.append("load"))
    capsys.readouterr()
    assert (
        cli_main(
            ["process", str(src), "--out", str(out), *args, *MODEL, "--weights", "random:vitt16", "--resume"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "not a saved pipeline state" in err and "state-" in err, err
    assert not marker.exists() and not loads
    # control: the payload does run when unpickled (so the test above can fail)
    monkeypatch.undo()
    pickle.loads(payload)
    assert marker.exists()


def _args(src: Path, out: Path, weights: str, outputs: str = "features_pca") -> argparse.Namespace:
    p = argparse.ArgumentParser()
    proc.add_arguments(p)
    return p.parse_args([str(src), "--out", str(out), "--outputs", outputs, "--weights", weights, *MODEL])


def _fingerprint(a: argparse.Namespace) -> dict:
    return proc.fingerprint(a, Path(a.inputs[0]), proc._config(a), proc._outputs(a.outputs))


def test_resume_fingerprints_the_model_by_content(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Same bytes under another name: same fingerprint (resumes); other bytes under the same name, another
    output set or another input: refused with a message naming what changed."""
    from dinov3_ros.models import build_backbone

    torch.manual_seed(0)
    w = tmp_path / "w.pth"
    torch.save(build_backbone("vitt16").state_dict(), w)
    src = make_bag(tmp_path / "in")
    out = tmp_path / "out"
    fp = _fingerprint(_args(src, out, str(w)))
    shutil.copyfile(w, tmp_path / "renamed.pth")
    assert _fingerprint(_args(src, out, str(tmp_path / "renamed.pth"))) == fp
    work = out.with_name(out.name + ".partial")
    work.mkdir()

    def resume(weights: str, outputs: str = "features_pca") -> tuple[int, str]:
        (work / JOURNAL).write_text(json.dumps({"fingerprint": fp}, sort_keys=True) + "\n")
        argv = ["process", str(src), "--out", str(out), "--outputs", outputs, "--weights", weights, *MODEL]
        capsys.readouterr()
        rc = cli_main([*argv, "--resume"])
        return rc, capsys.readouterr().err

    torch.manual_seed(1)
    torch.save(build_backbone("vitt16").state_dict(), w)  # replaced in place
    rc, err = resume(str(w))
    assert rc == 1 and "different inputs/settings" in err and "model" in err, err
    rc, err = resume(str(tmp_path / "renamed.pth"), outputs="depth")
    assert rc == 1 and "outputs" in err and "model" not in err.split("(")[-1], err
    shutil.rmtree(src)
    make_bag(src, n=7, seed=1)  # another recording at the same path
    rc, err = resume(str(tmp_path / "renamed.pth"))
    assert rc == 1 and "input" in err, err
    shutil.rmtree(work)
    work.mkdir()
    fp = _fingerprint(_args(src, out, str(tmp_path / "renamed.pth")))
    rc, err = resume(str(tmp_path / "renamed.pth"))  # everything as journaled: the run completes
    assert rc == 0 and (out / "metadata.yaml").exists(), err

"""Bad command-line values end in one clear message and a non-zero exit, never a traceback, and write
nothing: ``dinov3-ros export`` and ``dinov3-ros process`` through the CLI's ``main`` (an exception escaping
it fails the test), and as real subprocesses for read-only directories and the good paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dinov3_ros.cli import main as cli_main
from dinov3_ros.cliargs import check_output_path

REPO = Path(__file__).resolve().parent.parent


def _cli(*argv: str, read_only: Path | None = None) -> subprocess.CompletedProcess:
    """``dinov3-ros ARGV`` in a fresh interpreter; ``read_only``: a directory the command cannot write.

    Not root: the directory is made 0555. Root ignores permissions, so the command runs in its own mount
    namespace where the directory is a read-only bind mount (what a read-only share looks like).
    """
    cmd = [sys.executable, "-m", "dinov3_ros.cli", *argv]
    if read_only is not None:
        if os.geteuid() != 0:
            read_only.chmod(0o555)
        else:
            script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
            cmd = ["unshare", "--mount", "sh", "-c", script, str(read_only), *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    finally:
        if read_only is not None:
            read_only.chmod(0o755)
    if read_only is not None and ("mount:" in r.stderr or "unshare:" in r.stderr):
        pytest.fail(f"could not make {read_only} read-only for root: {r.stderr.strip()}")
    return r


class _InProcess:
    """The CLI's ``main`` run here; ``returncode`` / ``stderr`` like a finished subprocess."""

    def __init__(self, capsys: pytest.CaptureFixture) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> subprocess.CompletedProcess:
        self.capsys.readouterr()
        try:
            rc = cli_main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
        cap = self.capsys.readouterr()
        return subprocess.CompletedProcess(argv, rc, cap.out, cap.err)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> _InProcess:
    return _InProcess(capsys)


def _assert_clean_failure(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, r.stderr  # one message
    for n in needles:
        assert n in lines[0], (n, r.stderr)


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


# ------------------------------------------------------------------------------------------ export

EXPORT = ("export", "--arch", "vitt16")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--resolution", "0x0"], ["0x0", "positive"]),
        (["--resolution", "64x0"], ["64x0", "positive"]),
        (["--resolution=-64x64"], ["-64x64"]),
        (["--resolution", "64x-64"], ["64x-64"]),
        (["--resolution", "60x64"], ["60x64", "patch size"]),
        (["--resolution", "big"], ["big"]),
        (["--resolution", "64x64", "--batch", "0"], ["--batch", ">= 1"]),
        (["--resolution", "64x64", "--batch=-3"], ["--batch", ">= 1"]),
        (["--resolution", "64x64", "--batch", "two"], ["--batch", "'two'"]),
        (["--resolution", "64x64", "--precision", "fp8"], ["--precision", "fp8"]),
        (["--resolution", "64x64", "--opset", "12"], ["--opset", "12"]),
        (["--resolution", "64x64", "--format", "tflite"], ["--format", "tflite"]),
    ],
)
def test_export_rejects_bad_values(cli, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    r = cli(*EXPORT, *args, "--out", str(tmp_path / "m.onnx"))
    _assert_clean_failure(r, *needles)
    assert _files(tmp_path) == []


def test_export_rejects_unwritable_outputs(cli, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (tmp_path / "file" / "m.onnx", "not a directory"),
        (tmp_path / "file" / "sub" / "m.onnx", "not a directory"),
        (tmp_path, "is a directory"),
    ]
    for out, why in cases:
        r = cli(*EXPORT, "--resolution", "64x64", "--out", str(out))
        _assert_clean_failure(r, why)
    ro = tmp_path / "ro"
    ro.mkdir()
    r = _cli(*EXPORT, "--resolution", "64x64", "--out", str(ro / "m.onnx"), read_only=ro)
    _assert_clean_failure(r, str(ro), "cannot write")
    assert _files(tmp_path) == ["file", "ro"]


def test_export_still_writes_a_good_model(tmp_path: Path) -> None:
    out = tmp_path / "new" / "m.onnx"  # a missing parent directory is created
    r = _cli(*EXPORT, "--resolution", "64x64", "--batch", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------ process


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("images")
    for i in range(2):
        rgb = (np.random.default_rng(i).random((48, 64, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(d / f"{i:03d}.png"), rgb)
    return d


MODEL = ("--weights", "random:vitt16", "--resolution", "48x64", "--device", "cpu", "--no-progress")


def _process(images: Path, out: Path, *args: str, read_only: Path | None = None):
    return _cli("process", str(images), "--out", str(out), *MODEL, *args, read_only=read_only)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--outputs", "feature_pca"], ["feature_pca", "did you mean 'features_pca'"]),
        (["--outputs", "features,depht"], ["depht", "did you mean 'depth'"]),
        (["--outputs", ","], ["unknown output"]),
        (["--batch-size", "0"], ["--batch-size", ">= 1"]),
        (["--batch-size=-2"], ["--batch-size", ">= 1"]),
        (["--decode-workers", "0"], ["--decode-workers"]),
        (["--build-workers=-1"], ["--build-workers"]),
        (["--checkpoint-every=-5"], ["--checkpoint-every", ">= 0"]),
        (["--cv-threads=-7"], ["--cv-threads"]),
        (["--torch-threads=-9"], ["--torch-threads"]),
        (["--fps=-3"], ["--fps", ">= 0"]),
        (["--fps", "nan"], ["--fps", "finite"]),
        (["--fps", "inf"], ["--fps", "finite"]),
        (["--contact-frames", "0", "--contact-sheet", "{tmp}/s.png"], ["--contact-frames"]),
        (["--fx", "nan", "--fy", "50", "--cx", "32", "--cy", "24"], ["--fx", "finite"]),
        (["--fx=-50", "--fy", "50", "--cx", "32", "--cy", "24"], ["focal"]),
        (["--resolution", "0x0"], ["0x0"]),
        (["--set", "no_such_key=1"], ["no_such_key"]),
    ],
)
def test_process_rejects_bad_values(
    cli, images: Path, tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = cli("process", str(images), "--out", str(tmp_path / "o"), *MODEL, *argv)
    _assert_clean_failure(r, *needles)
    assert _files(tmp_path) == []


def test_process_rejects_a_read_only_output_directory(cli, images: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    for out in (ro / "o", ro / "sub" / "o"):
        r = _process(images, out, read_only=ro)
        _assert_clean_failure(r, "cannot write", str(ro))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = cli("process", str(images), "--out", str(a_file / "o"), *MODEL)
    _assert_clean_failure(r, "not a directory")
    r = cli("process", str(images), "--out", str(tmp_path / "o"), *MODEL, "--preview", str(a_file / "p.mp4"))
    _assert_clean_failure(r, "not a directory")
    assert _files(tmp_path) == ["file", "ro"]


def test_process_still_writes_with_good_values(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    r = _process(
        images, out, "--batch-size", "1", "--checkpoint-every", "0", "--fps", "5", "--cv-threads", "0"
    )
    assert r.returncode == 0, r.stderr
    assert (out / "metadata.yaml").is_file() and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------ the check


def test_check_output_path(tmp_path: Path) -> None:
    check_output_path(tmp_path / "a" / "b" / "m.onnx", is_file=True)  # missing parents are fine
    check_output_path(tmp_path / "bag", is_file=False)
    with pytest.raises(ValueError, match="is a directory"):
        check_output_path(tmp_path, is_file=True)
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        check_output_path(tmp_path / "f" / "x", is_file=False)

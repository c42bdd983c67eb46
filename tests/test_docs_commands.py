"""Executable documentation: every fenced block of README.md, docs/*.md, models/README.md and
dinov3_ros/offline/README.md is marked.

The line before each fenced block is a marker comment, ``<!-- doc-test: KIND ... -->``:

- ``run [fixture=NAME] [check=SHELL]``: run here, on CPU, exactly as written (``bash -euo pipefail``);
  the blocks of one file run in order in one temporary directory (a later block sees an earlier one's
  files), which holds links to the repository's ``models``, ``config``, ``launch`` and ``training``.
  ``fixture`` prepares inputs first (:data:`FIXTURES`), ``check`` is a shell test run after it.
- ``python``: a Python block run here with this interpreter.
- ``covered-by TEST``: run as written by another test (``tests/<file>.py::<test>``, which must exist).
- ``needs WHAT TEST``: cannot run here (WHAT in :data:`NEEDS`); TEST is the closest test that runs here.
- ``help``: a synopsis; its ``dinov3-ros`` subcommands and options must exist.
- ``text``: not a command (layouts, diagrams, signatures, output).

An unmarked block fails. Every ``dinov3-ros`` line of any fenced block, and every inline
```dinov3-ros ...``` span, must name an existing subcommand with existing options.

The environment of ``run`` blocks: ``dinov3-ros``, ``dinov3-train``, ``python`` and ``python3`` run this
checkout with this interpreter; ``OMP_NUM_THREADS=2``; nothing else is overridden (the commands use
their documented defaults, e.g. the shipped default model on CPU).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "models" / "README.md",
    ROOT / "dinov3_ros" / "offline" / "README.md",
]
KINDS = ("run", "python", "covered-by", "needs", "help", "text")
#: what a ``needs`` block needs that CI machines do not have
NEEDS = {
    "ros2-cli": "a ROS 2 installation (ros2, colcon, apt)",
    "gpu": "an NVIDIA GPU",
    "multi-gpu": "several NVIDIA GPUs",
    "tensorrt": "TensorRT",
    "jetson": "a Jetson",
    "docker": "Docker",
    "meta-weights": "Meta's gated DINOv3 checkpoints",
    "cpu-minutes": "more CPU time than CI gives the documentation",
}
MARKER = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(```+|~~~+)(.*)$")
LINKS = ("models", "config", "launch", "training")
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    """One fenced block and its marker."""

    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    kind: str | None
    args: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def option(self, name: str) -> str | None:
        for a in self.args:
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        return None


def parse_blocks(doc: Path) -> list[Block]:
    """Every fenced block of ``doc`` with the marker on the closest non-blank line above it."""
    lines = doc.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).strip()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence[:3]):
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mk = MARKER.search(lines[k]) if k >= 0 else None
        kind, args = None, []
        if mk:
            words = shlex.split(mk.group(1))
            kind, args = (words[0], words[1:]) if words else (None, [])
        blocks.append(Block(doc, i + 1, lang, "\n".join(lines[i + 1 : j]), kind, args))
        i = j + 1
    return blocks


ALL_BLOCKS = [b for d in DOCS for b in parse_blocks(d)]


def test_docs_have_blocks():
    assert len(ALL_BLOCKS) > 10
    assert {b.kind for b in ALL_BLOCKS} >= {"run", "needs", "text"}


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.id)
def test_block_is_marked(block: Block):
    assert block.kind in KINDS, (
        f"{block.id}: fenced block without a doc-test marker (put <!-- doc-test: KIND ... --> on the line "
        f"above it; KIND one of {', '.join(KINDS)}; see tests/test_docs_commands.py)"
    )
    if block.kind == "needs":
        assert len(block.args) == 2 and block.args[0] in NEEDS, (
            f"{block.id}: 'needs WHAT TEST' with WHAT in {', '.join(NEEDS)}, got {block.args}"
        )
        _test_exists(block.args[1], block.id)
    if block.kind == "covered-by":
        assert len(block.args) == 1, f"{block.id}: 'covered-by TEST', got {block.args}"
        _test_exists(block.args[0], block.id)
    if block.kind == "run":
        fx = block.option("fixture")
        assert fx is None or fx in FIXTURES, f"{block.id}: unknown fixture {fx!r}"


def _test_exists(ref: str, where: str) -> None:
    path, _, name = ref.partition("::")
    f = ROOT / path
    assert f.is_file() and path.startswith("tests/"), f"{where}: {path} is not a test file"
    if name:
        tree = ast.parse(f.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert name in names, f"{where}: {path} has no test {name}"


# ------------------------------------------------------------------ options of dinov3-ros commands


def _subparser(name: str) -> argparse.ArgumentParser:
    from dinov3_ros.cli import SUBCOMMANDS

    module = importlib.import_module(SUBCOMMANDS[name][0])
    p = argparse.ArgumentParser(prog=f"dinov3-ros {name}")
    module.add_arguments(p)
    return p


def _options(name: str) -> set[str]:
    return {o for a in _subparser(name)._actions for o in a.option_strings}


def _command_lines(text: str) -> list[str]:
    """Logical ``dinov3-ros`` command lines of a shell text (continuations joined, comments cut)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        for part in re.split(r"&&|;|\|", line.split(" #")[0]):
            part = part.strip()
            if part.startswith("dinov3-ros "):
                out.append(part)
    return out


def check_command(cmd: str, where: str) -> None:
    """``cmd`` (``dinov3-ros SUB ...``) names an existing subcommand and existing options."""
    from dinov3_ros.cli import SUBCOMMANDS

    words = cmd.replace("[", " ").replace("]", " ").split()
    sub = words[1]
    if sub in ("-h", "--help"):
        return
    assert sub in SUBCOMMANDS, f"{where}: unknown command 'dinov3-ros {sub}'"
    known = _options(sub)
    for w in words[2:]:
        if w.startswith("--"):
            opt = w.split("=", 1)[0]
            assert opt in known, f"{where}: 'dinov3-ros {sub}' has no option {opt}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if _command_lines(b.text)], ids=lambda b: b.id)
def test_block_commands_exist(block: Block):
    for cmd in _command_lines(block.text):
        check_command(cmd, block.id)


def _inline_commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for m in re.finditer(r"`(dinov3-ros [^`]+)`", text):
            out.append((f"{doc.relative_to(ROOT)}", m.group(1)))
    return out


def test_inline_commands_exist():
    cmds = _inline_commands()
    assert cmds
    for where, cmd in cmds:
        check_command(cmd, where)


# ------------------------------------------------------------------ running the blocks


def _make_fleet(d: Path) -> None:
    """Two small synthetic recordings as single MCAP files, ``fleet/run1.mcap`` and ``fleet/run2.mcap``."""
    from itertools import islice

    from dinov3_ros.synthetic.generator import SceneGenerator
    from dinov3_ros.synthetic.writers import write_bag

    (d / "fleet").mkdir(exist_ok=True)
    for k in (1, 2):
        gen = SceneGenerator(seed=k, width=160, height=120, frames_per_scene=4)
        bag = write_bag(islice(iter(gen), 4), d / ".fleet" / f"run{k}")
        (bag / f"run{k}.mcap").rename(d / "fleet" / f"run{k}.mcap")


#: inputs a ``run`` block may ask for (``fixture=NAME``), made before it runs
FIXTURES = {"fleet": _make_fleet}


def _env(d: Path) -> dict[str, str]:
    bin_dir = d / ".bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        shims = {
            "dinov3-ros": "-m dinov3_ros.cli",
            "dinov3-train": "-m training.cli",
            "python": "",
            "python3": "",
        }
        for name, args in shims.items():
            f = bin_dir / name
            f.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args} "$@"\n')
            f.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "2"
    return env


def _sh(script: str, d: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=d,
        env=_env(d),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert res.returncode == 0, (
        f"exit {res.returncode}:\n{script}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
    )
    return res


class DocRunner:
    """Runs the ``run``/``python`` blocks of each document in order, once, in one directory per document."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.done: dict[str, subprocess.CompletedProcess] = {}

    def workdir(self, doc: Path) -> Path:
        d = self.base / doc.relative_to(ROOT).as_posix().replace("/", "_")
        if not d.exists():
            d.mkdir(parents=True)
            for name in LINKS:
                (d / name).symlink_to(ROOT / name)
        return d

    def run(self, block: Block) -> subprocess.CompletedProcess:
        """Run ``block`` (and, first, the runnable blocks above it in its document)."""
        for b in [x for x in ALL_BLOCKS if x.doc == block.doc and x.kind in ("run", "python")]:
            if b.id not in self.done:
                self.done[b.id] = self._run_one(b)
            if b.id == block.id:
                break
        return self.done[block.id]

    def _run_one(self, b: Block) -> subprocess.CompletedProcess:
        d = self.workdir(b.doc)
        fx = b.option("fixture")
        if fx:
            FIXTURES[fx](d)
        if b.kind == "python":
            script = f'{shlex.quote(sys.executable)} - <<"DOC_TEST_EOF"\n{b.text}\nDOC_TEST_EOF'
        else:
            script = b.text
        check = b.option("check")
        return _sh(script + (f"\n{check}" if check else ""), d)


@pytest.fixture(scope="module")
def doc_runner(tmp_path_factory) -> DocRunner:
    return DocRunner(tmp_path_factory.mktemp("docs"))


RUN_BLOCKS = [b for b in ALL_BLOCKS if b.kind in ("run", "python")]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.id)
def test_run_block(block: Block, doc_runner: DocRunner):
    doc_runner.run(block)


def _readme_block(needle: str) -> Block:
    hits = [b for b in ALL_BLOCKS if b.doc.name == "README.md" and b.doc.parent == ROOT and needle in b.text]
    assert len(hits) == 1, f"README.md: {len(hits)} blocks contain {needle!r}"
    return hits[0]


SAMPLE_COMMAND = "dinov3-ros process run1.mcap --out run1_dino --preview run1.mp4 --contact-sheet run1.png"


def test_readme_sample_bag_writes_one_clean_output_set(doc_runner: DocRunner):
    """The README's offline command on the recording the README makes: the camera topic only, one
    output namespace, one message per frame on every output topic, the preview and contact sheet."""
    import cv2
    from rosbags.highlevel import AnyReader

    block = _readme_block(SAMPLE_COMMAND)
    assert block.kind == "run"
    res = doc_runner.run(block)
    d = doc_runner.workdir(block.doc)
    assert (d / "run1_dino" / "metadata.yaml").is_file()
    assert not list(d.glob("*.partial")) and not list(d.glob(".*partial*")), sorted(os.listdir(d))
    with AnyReader([d / "run1.mcap"]) as r:
        frames = sum(c.msgcount for c in r.connections if c.topic == "/camera/image_raw")
    assert frames > 0
    counts: dict[str, int] = {}
    with AnyReader([d / "run1_dino"]) as r:
        for c in r.connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
    assert counts and all(t.startswith("/dinov3/") for t in counts), counts
    assert "/dinov3/features/pca" in counts and "/dinov3/depth/image" in counts, counts
    assert not any(t.startswith(("/dinov3/camera/", "/dinov3/depth/image_raw")) for t in counts), counts
    assert set(counts.values()) == {frames}, counts  # one message per camera frame, nothing more
    cap = cv2.VideoCapture(str(d / "run1.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == frames
    assert cv2.imread(str(d / "run1.png")) is not None
    assert "0 undecodable" in res.stderr and "undecodable:" not in res.stderr, res.stderr
    assert "/camera/depth/image_raw (32FC1" in res.stderr, res.stderr  # says what it left out


def test_relative_links_point_to_files():
    """Every relative Markdown link of the documentation names a file or directory of the repository."""
    bad, checked = [], 0
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            checked += 1
            if not (doc.parent / target.split("#", 1)[0]).exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target}")
    assert checked > 10 and not bad, (checked, bad)


def test_parser_sees_markers_and_unmarked_blocks(tmp_path):
    """The marker is read from the closest non-blank line above a block; a block without one has none."""
    doc = tmp_path / "x.md"
    doc.write_text(
        'text\n\n<!-- doc-test: run check="test -f a" -->\n\n```bash\ntouch a\n```\n\nprose\n```\nls\n```\n'
    )
    a, b = parse_blocks(doc)
    assert (a.kind, a.option("check"), a.text, a.line) == ("run", "test -f a", "touch a", 5)
    assert b.kind is None and b.text == "ls"
    assert _command_lines("dinov3-ros process a\\\n   --out b  # c\nls && dinov3-ros eval --x") == [
        "dinov3-ros process a --out b",
        "dinov3-ros eval --x",
    ]
    with pytest.raises(AssertionError, match="has no option --nope"):
        check_command("dinov3-ros process in --nope", "x.md")

"""Atomic, resumable rosbag2 output for ``dinov3-ros process``.

Layout while a run is in progress (``OUT`` is the requested output directory)::

    OUT.partial/                 work directory: its name says the output is not complete
      journal.jsonl              line 1: run fingerprint; then one line per checkpoint
      state-<n>.json, .npz       pipeline per-source state at checkpoint n (plain data, for --resume)
      <OUT.name>/<OUT.name>.mcap the bag being written (always MCAP while in progress)

On success the bag directory is renamed to ``OUT`` (for ``--storage sqlite3`` it is first converted)
and ``OUT.partial`` is removed, so a complete-looking ``OUT`` only ever appears whole. A killed run
leaves ``OUT.partial``; ``--resume`` recovers every message up to the last checkpoint from the cut
MCAP file (:mod:`.mcap_scan`), rewrites them into a fresh bag and continues from there. A run stopped
by corrupt input finalizes what it wrote as a valid bag ``OUT.partial/<OUT.name>`` with
``custom_data`` ``dinov3_ros.complete: "false"`` and ``dinov3_ros.error``. The bag is written with
rosbags' ``Writer`` and the tool's MCAP storage plugin (:mod:`.storage`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinov3_ros.fsutil import atomic_write_text, fsync_dir, fsync_tree
from dinov3_ros.msgs.cdr import Buffer
from dinov3_ros.pipeline import state as state_io

from .storage import BagWriter, McapStorage

JOURNAL = "journal.jsonl"
PARTIAL_SUFFIX = ".partial"


class OutputExistsError(FileExistsError):
    """The output (or a partial run of it) exists and neither --overwrite nor --resume allows it."""


class ResumeError(RuntimeError):
    """A partial run cannot be resumed (missing, or made with different settings)."""


@dataclass(frozen=True)
class ConnKey:
    """Identity of an output connection (stable across runs, stored in the journal)."""

    topic: str
    msgtype: str
    source: str  # "out" (pipeline output) or "in:<index>" (copied input connection)


def partial_dir(out: Path) -> Path:
    """``OUT.partial``: where an unfinished run of ``out`` lives."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


class OutputBag:
    """rosbag2 writer with tmp-name + rename, checkpoints and resume.

    ``resolve_conn(key) -> dict(msgdef=, rihs01=, serialization_format=, qos=)`` supplies a
    connection's definition; connections are added in first-use order and that order is journaled.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        storage: str = "mcap",
        overwrite: bool = False,
        resume: bool = False,
        fingerprint: dict[str, Any] | None = None,
        resolve_conn: Any = None,
    ) -> None:
        if storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        self.out = Path(out)
        self.storage = storage
        self.overwrite = overwrite
        self.resume = resume
        self.fingerprint = fingerprint or {}
        self.resolve_conn = resolve_conn
        self.work = partial_dir(self.out)
        self.bag_dir = self.work / self.out.name
        self.writer: Any = None
        self.conns: dict[ConnKey, Any] = {}
        self.conn_order: list[ConnKey] = []
        self.count = 0  # messages written
        self.checkpoints: list[dict[str, Any]] = []
        self._journal: Any = None
        self._bg: Any = None  # background checkpoint durability (fsync + journal), one thread
        self._pending: list[Any] = []

    # ------------------------------------------------------------------ opening
    def check_target(self) -> None:
        """Refuse an existing output (unless --overwrite) or a stale partial run (unless --resume/--overwrite)."""
        if self.out.exists() and not self.overwrite:
            raise OutputExistsError(f"output {self.out} exists; pass --overwrite to replace it")
        if self.work.exists() and not (self.resume or self.overwrite):
            raise OutputExistsError(
                f"an unfinished run of {self.out} exists at {self.work}; pass --resume to continue it "
                f"or --overwrite to start over"
            )
        if self.out.parent and not self.out.parent.exists():
            self.out.parent.mkdir(parents=True, exist_ok=True)

    def open(self) -> dict[str, Any] | None:
        """Open for writing; returns the checkpoint to resume from (``None`` for a fresh run)."""
        self.check_target()
        if self.resume and (self.work / JOURNAL).exists():
            return self._open_resume()
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self._new_writer()
        self._journal = (self.work / JOURNAL).open("w")
        self._journal_line({"fingerprint": self.fingerprint})
        return None

    def _new_writer(self) -> None:
        from rosbags.rosbag2 import StoragePlugin

        self.writer = BagWriter(self.bag_dir, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()

    @property
    def _storage(self) -> McapStorage:
        return self.writer.storage

    def _journal_line(self, obj: dict[str, Any]) -> None:
        assert self._journal is not None
        self._journal.write(json.dumps(obj, sort_keys=True) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def _open_resume(self) -> dict[str, Any] | None:
        from .mcap_scan import McapDamagedError, McapMessage, scan

        lines = [json.loads(x) for x in (self.work / JOURNAL).read_text().splitlines() if x.strip()]
        if not lines or "fingerprint" not in lines[0]:
            raise ResumeError(f"{self.work / JOURNAL} is not a dinov3-ros journal")
        if lines[0]["fingerprint"] != json.loads(json.dumps(self.fingerprint, sort_keys=True)):
            old, new = lines[0]["fingerprint"], self.fingerprint
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ResumeError(
                f"cannot resume {self.work}: it was made with different inputs/settings ({', '.join(diff)}); "
                f"pass --overwrite to start over"
            )
        cps = [x for x in lines[1:] if "checkpoint" in x]
        old_bag = self.work / (self.out.name + ".resume-old")
        if old_bag.exists():  # an earlier resume died while copying: its source is still complete
            shutil.rmtree(self.bag_dir, ignore_errors=True)
        elif self.bag_dir.exists():
            self.bag_dir.rename(old_bag)
        mcap = old_bag / f"{self.out.name}.mcap"

        def messages() -> Any:
            if not mcap.exists():
                return
            try:
                for rec in scan(mcap):
                    if isinstance(rec, McapMessage):
                        yield rec
            except McapDamagedError:
                return

        n_recovered = sum(1 for _ in messages())  # pass 1: count (nothing kept in memory)
        usable = [cp for cp in cps if cp["out_msgs"] <= n_recovered]
        cp = usable[-1] if usable else None
        self._new_writer()
        kept = [c for c in cps if cp is not None and c["out_msgs"] <= cp["out_msgs"]]
        if cp is not None:
            keys = [ConnKey(*k) for k in cp["conns"]]
            bounds = {c["out_msgs"] for c in kept}
            # pass 2: same writes, same connection first-use order, same chunk cuts as the interrupted
            # run, so the final bytes match a run that was never interrupted.
            for rec in messages():
                if self.count >= cp["out_msgs"]:
                    break
                self.write(keys[rec.channel_id - 1], rec.log_time, rec.data)
                if self.count in bounds:
                    self._flush_chunk()
            self._flush_chunk()
        # only now replace the journal (atomically): a crash above leaves the old one valid
        atomic_write_text(
            self.work / JOURNAL, "".join(json.dumps(x, sort_keys=True) + "\n" for x in [lines[0], *kept])
        )
        self._journal = (self.work / JOURNAL).open("a")
        self.checkpoints = list(kept)
        shutil.rmtree(old_bag, ignore_errors=True)
        return cp

    # ------------------------------------------------------------------ writing
    def _conn(self, key: ConnKey) -> Any:
        c = self.conns.get(key)
        if c is not None:
            return c
        spec = self.resolve_conn(key)
        c = self.writer.add_connection(
            key.topic,
            key.msgtype,
            msgdef=spec["msgdef"],
            rihs01=spec["rihs01"],
            serialization_format=spec.get("serialization_format", "cdr"),
            offered_qos_profiles=list(spec.get("qos", ())),
        )
        self.conns[key] = c
        self.conn_order.append(key)
        return c

    def write(self, key: ConnKey, log_ns: int, raw: Buffer | Sequence[Buffer]) -> None:
        """Write one serialized message at log time ``log_ns`` (one buffer or a list of parts, kept by
        reference until written: do not modify them)."""
        self.writer.write(self._conn(key), int(log_ns), raw)
        self.count += 1

    def _flush_chunk(self) -> None:
        os.fsync(self._storage.flush())

    def checkpoint(self, info: dict[str, Any], state: Any) -> None:
        """Make everything written so far durable and journal a resume point.

        The chunk is closed and flushed to the OS here; the fsync (hundreds of MB at the default
        interval), the state file and the journal line follow on a background thread, so writing goes
        on meanwhile. The journal line appears only once the data before it is durable; closing the
        bag waits for pending checkpoints.
        """
        self._raise_pending()
        fd = self._storage.flush()
        n = len(self.checkpoints)
        cp = dict(
            info,
            checkpoint=n,
            out_msgs=self.count,
            conns=[[k.topic, k.msgtype, k.source] for k in self.conn_order],
        )
        if state is not None:
            cp["state"] = f"state-{n:06d}"
        self.checkpoints.append(cp)
        if self._bg is None:
            from concurrent.futures import ThreadPoolExecutor

            self._bg = ThreadPoolExecutor(1, thread_name_prefix="bag-durable")
        self._pending.append(self._bg.submit(self._durable, cp, state, fd))

    def _durable(self, cp: dict[str, Any], state: Any, fd: int) -> None:
        """Background half of :meth:`checkpoint` (one at a time, in order)."""
        os.fsync(fd)
        n = int(cp["checkpoint"])
        if state is not None:
            tree, arrays = state
            state_io.save(self.work / cp["state"], tree, arrays)
            for old in self.work.glob(f"state-{n - 2:06d}.*"):  # keep the last two
                old.unlink()
        self._journal_line(cp)

    def _raise_pending(self, wait: bool = False) -> None:
        """Surface a failed background checkpoint (waiting for all of them with ``wait``)."""
        keep = []
        for fut in self._pending:
            if wait or fut.done():
                fut.result()
            else:
                keep.append(fut)
        self._pending = keep

    def _wait_pending(self) -> None:
        try:
            self._raise_pending(wait=True)
        finally:
            if self._bg is not None:
                self._bg.shutdown(wait=True)
                self._bg = None

    def load_state(self, cp: dict[str, Any]) -> Any:
        """The pipeline state stored with checkpoint ``cp`` (plain data; ``ResumeError`` if unreadable)."""
        name = cp.get("state")
        if not name:
            return None
        if not isinstance(name, str) or not name.startswith("state-") or "/" in name:
            raise ResumeError(f"{self.work / JOURNAL}: bad state reference {name!r}")
        try:
            return state_io.load(self.work / name)
        except ValueError as exc:
            raise ResumeError(f"cannot resume {self.work}: {exc}") from None

    # ------------------------------------------------------------------ closing
    def _close_writer(self, custom: dict[str, str]) -> None:
        self._wait_pending()
        self._custom = dict(custom)
        for k, v in custom.items():
            self.writer.set_custom_data(k, v)
        self.writer.close()
        self.writer = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def finalize(self, custom: dict[str, str] | None = None) -> Path:
        """Close, convert if needed, and atomically move the bag to ``OUT``."""
        self._close_writer(dict(custom or {}, **{"dinov3_ros.complete": "true"}))
        src = self.bag_dir
        if self.storage == "sqlite3":
            conv = self.work / "sqlite3" / self.out.name
            convert_bag(self.bag_dir, conv, "sqlite3", self._custom)
            src = conv
        # the data since the last checkpoint (and the index, metadata.yaml) reach the disk before the
        # rename publishes the bag: a power cut can leave no output, never a truncated one under OUT
        fsync_tree(src)
        if self.out.exists():  # --overwrite: swap only once the new output is complete
            trash = self.work / (self.out.name + ".replaced")
            self.out.rename(trash)
        src.rename(self.out)
        fsync_dir(self.out.parent)
        shutil.rmtree(self.work, ignore_errors=True)
        return self.out

    def finalize_partial(self, error: str, custom: dict[str, str] | None = None) -> Path:
        """Close as a valid but incomplete bag inside ``OUT.partial`` (flagged in custom_data)."""
        c = dict(custom or {})
        c.update({"dinov3_ros.complete": "false", "dinov3_ros.error": error[:2000]})
        self._close_writer(c)
        for p in self.work.glob("state-*"):
            p.unlink()
        (self.work / JOURNAL).unlink(missing_ok=True)  # not resumable: the input itself is damaged
        if self.storage == "sqlite3":
            conv = self.work / (self.out.name + ".sqlite3")
            convert_bag(self.bag_dir, conv / self.out.name, "sqlite3", self._custom)
            shutil.rmtree(self.bag_dir)
            (conv / self.out.name).rename(self.bag_dir)
            shutil.rmtree(conv)
        return self.bag_dir

    def abandon(self) -> None:
        """Leave the work directory as is (for --resume); just release file handles."""
        try:
            self._wait_pending()
        except OSError:
            pass
        if self.writer is not None:
            try:
                self.writer.abort()  # writes out what the storage holds (no index or footer) and closes
            except (OSError, ValueError):
                pass
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def convert_bag(src: Path, dst: Path, storage: str, custom: dict[str, str] | None = None) -> None:
    """Copy a bag written by :class:`OutputBag` to ``dst`` with another storage plugin.

    Messages are copied in file order (the order they were written), with the same connections.
    """
    from rosbags.rosbag2 import Reader, StoragePlugin

    from .mcap_scan import McapMessage, scan

    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Reader(src) as reader:
        conns = sorted(reader.connections, key=lambda c: c.id)
        files = [src / f"{src.name}.mcap"]
    w = BagWriter(dst, version=9, storage_plugin=plugin)
    w.open()
    cmap = {}
    for c in conns:
        cmap[c.id] = w.add_connection(
            c.topic,
            c.msgtype,
            msgdef=c.msgdef.data,
            rihs01=c.digest,
            serialization_format=c.ext.serialization_format,
            offered_qos_profiles=c.ext.offered_qos_profiles,
        )
    for f in files:
        for rec in scan(f):
            if isinstance(rec, McapMessage):
                w.write(cmap[rec.channel_id], rec.log_time, rec.data)
    for k, v in (custom or {}).items():
        w.set_custom_data(k, v)
    w.close()

"""A lost rank ends the job in bounded time, with one line naming it.

When a rank dies (killed, out of memory, its node gone) the others wait in their next collective: under
gloo it fails within a second with a transport error that names no rank; under NCCL it can block until the
process group's timeout (30 minutes by default) with every GPU of the job held. Lightning's launcher kills
the ranks of one node when one of them exits, silently and only on that node; while the watchdog runs,
that observer is stopped (:func:`hbt.compat.stop_child_process_observer`) and the watchdog does its job.

Here every rank beats a heartbeat in the store the process group was rendezvoused through (a counter per
rank, a thread, one round trip per interval for all ranks' counters) and watches the others:

- a rank whose counter has not moved for ``timeout_s`` (and that has not finished normally), a rank whose
  process on this host ended (with its exit status where this process launched it), or the store gone
  (rank zero hosts it) is lost; a rank that stopped on an error of its own said so in the store first,
  and the others name it as such;
- the rank that sees it writes which one in the store, prints one line and ends its process (and the
  processes it launched); the others read the line from the store within an interval and end alike.

A collective that fails at once (gloo) is turned into the same line by :func:`explain_failure`, which
looks for the lost rank: a process of this host that is gone, else a counter that stopped. Checkpoints are
written atomically (:class:`hbt.checkpointing.AtomicCheckpointIO`), so ending a process never leaves a half
one: ``ckpt_path=auto`` resumes from the last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import lightning as L
import torch.distributed as dist

from hbt.checkpointing import agree_on_resume
from hbt.compat import default_store, launched_processes, stop_child_process_observer
from hbt.errors import ConfigError, HbtError

_ACTIVE: RankWatchdog | None = None


class RankLost(HbtError):
    def __init__(self, lost: int, world: int, why: str, me: int):
        self.lost = lost
        super().__init__(
            f"distributed error: rank {lost} of {world} was lost ({why}); rank {me} stopped. "
            "Resume with ckpt_path=auto: the newest checkpoint that loads"
        )


def check_timeout(timeout_s) -> float | None:
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ConfigError("lost_rank_timeout_s", f"{timeout_s!r} must be a positive number of seconds (null: no watchdog)")
    return float(timeout_s)


class RankWatchdog:
    def __init__(self, timeout_s: float, interval_s: float | None = None, trainer: L.Trainer | None = None):
        self.timeout_s = timeout_s
        self.interval_s = interval_s or min(2.0, max(0.2, timeout_s / 20))
        self.trainer = trainer
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._stop = threading.Event()
        self.failing = threading.Event()  # this rank's main thread is on an error (explain)
        self.ended: str | None = None  # the line the watchdog thread printed before ending the process
        self._thread: threading.Thread | None = None

    # -- start and stop: both collective-free once started ----------------------------------------------
    def start(self) -> None:
        token = [uuid.uuid4().hex if self.rank == 0 else None]
        dist.broadcast_object_list(token, src=0)  # keys of this job only (a multirun reuses the store)
        self.prefix = f"hbt/watchdog/{token[0]}"
        self.store = self._client()
        self.store.set(self._key("beat", self.rank), "0")
        self.store.set(self._key("where", self.rank), f"{socket.gethostname()}:{os.getpid()}")
        dist.barrier()  # every rank's keys exist before anyone reads them
        self.keys = [self._key("beat", r) for r in range(self.world)]
        self.where = {r: self.store.get(self._key("where", r)).decode() for r in range(self.world)}
        self._thread = threading.Thread(target=self._run, name="hbt-rank-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """A normal end: this rank's silence from now on is not a loss."""
        if self._thread is None:
            return
        try:
            self.store.set(self._key("done", self.rank), "1")
        except Exception:  # noqa: BLE001 - the store may be gone at the very end; nothing to tell anyone
            pass
        self._stop.set()
        self._thread.join(timeout=self.interval_s * 2)
        self._thread = None

    def _client(self):
        """A client connection of its own to the job's store (the heartbeat never waits behind the main
        thread's store calls), where the rendezvous left its address; else the default group's store."""
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if host and port:
            return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=max(30.0, self.interval_s * 4)))
        return default_store()

    def _key(self, kind: str, rank: int | str) -> str:
        return f"{self.prefix}/{kind}/{rank}"

    # -- the thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        seen = [(-1, time.monotonic())] * self.world
        while not self._stop.wait(self.interval_s):
            if (found := self._exited_here()) is not None:
                if found[0] == 0 and self._stop.wait(min(10.0, self.timeout_s)):
                    return  # rank zero ended normally, a moment before this rank
                if self.failing.is_set():
                    return  # this rank is on an error of its own: the main thread says what it is
                self._end(str(RankLost(found[0], self.world, found[1], self.rank)), report=True)
            try:
                self.store.add(self._key("beat", self.rank), 1)
                if self.store.check([self._key("lost", "report")]):
                    self._end(self.store.get(self._key("lost", "report")).decode(), report=False)
                counts = [int(value) for value in self.store.multi_get(self.keys)]
            except Exception:  # noqa: BLE001 - the store went away with the process hosting it
                if self._stop.wait(min(10.0, self.timeout_s)):
                    return  # this rank was ending normally: rank zero left first
                self._end(str(self._store_gone()), report=False)
            now = time.monotonic()
            seen = [(count, now) if count != old else (old, since) for count, (old, since) in zip(counts, seen)]
            stale = [r for r, (_, since) in enumerate(seen) if r != self.rank and now - since > self.timeout_s]
            stale = [r for r in stale if not self._finished(r)]
            if stale and not self.failing.is_set():
                why = self._why(stale[0], f"no heartbeat for {self.timeout_s:g} s, lost_rank_timeout_s")
                self._end(str(RankLost(stale[0], self.world, why, self.rank)), report=True)

    def _exited_here(self) -> tuple[int, str] | None:
        """A rank whose process ran on this host and ended before finishing normally, with its exit status
        where this process launched it (Lightning's launcher). Rank zero's end is not checked against the
        store, which goes with it."""
        launched = dict(_launched(self.trainer))
        host = socket.gethostname()
        for rank, where in self.where.items():
            name, _, pid = where.rpartition(":")
            if rank == self.rank or name != host or _alive(int(pid)) or (rank != 0 and self._finished(rank)):
                continue
            how = ""
            if rank in launched:
                with contextlib.suppress(subprocess.TimeoutExpired):  # another thread may be reaping it
                    code = launched[rank].wait(timeout=1)
                    how = f", killed by signal {-code}" if code < 0 else f", exit code {code}"
            return rank, f"its process ended{how}" if rank == 0 else self._why(rank, f"its process ended{how}")
        return None

    def _store_gone(self) -> RankLost:
        """The store stopped answering: rank zero, which hosts it, is gone. Where it ran on this host, its
        end is confirmed from its process (a killed process closes its sockets a moment before the
        kernel lists it as ended)."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            found = self._exited_here()
            if found is not None:
                return RankLost(found[0], self.world, found[1], self.rank)
            time.sleep(0.05)
        return RankLost(0, self.world, "the store it hosts stopped answering", self.rank)

    def _finished(self, rank: int) -> bool:
        """The rank ended normally."""
        return self._has(rank, "done")

    def _has(self, rank: int, kind: str) -> bool:
        try:
            return self.store.check([self._key(kind, rank)])
        except Exception:  # noqa: BLE001 - the store is gone: no word either way
            return False

    def _why(self, rank: int, how: str) -> str:
        """A rank that said it was failing stopped on an error of its own, which it printed."""
        return "it stopped on an error of its own, printed by it" if self._has(rank, "failing") else how

    def _end(self, line: str, report: bool) -> None:
        self.ended = line
        if report:
            try:
                self.store.set(self._key("lost", "report"), line)
            except Exception:  # noqa: BLE001 - best effort: the others find out by themselves
                pass
        print(line, file=sys.stderr, flush=True)
        for _, proc in _launched(self.trainer):
            if proc.poll() is None:
                proc.kill()  # they may be blocked in a collective: SIGTERM would not end them
        if report and self.rank == 0:
            time.sleep(self.interval_s * 2)  # the others read the report from the store this process hosts
        os._exit(1)

    # -- a collective that failed in the main thread ----------------------------------------------------
    def explain(self) -> RankLost | None:
        """After a failed collective: the lost rank, found within a few heartbeat intervals, or None (the
        error was something else: its traceback stands)."""
        if self.ended is not None:  # the thread found the loss first and, having said so, ends the process
            time.sleep(self.interval_s * 4 + 10)
        found = self._exited_here()  # before touching the store: torch logs a stack trace when it is gone
        if found is not None:
            return RankLost(found[0], self.world, found[1], self.rank)
        self.failing.set()
        try:
            self.store.set(self._key("failing", self.rank), "1")  # this rank's own error: it says so itself
            first = [int(v) for v in self.store.multi_get(self.keys)]
        except Exception:  # noqa: BLE001 - the store was gone when the collective failed: rank zero was lost
            return self._store_gone()
        deadline = time.monotonic() + self.interval_s * 2 + 0.5
        while (found := self._exited_here()) is None and time.monotonic() < deadline:
            time.sleep(min(0.2, self.interval_s))
        if found is not None:
            return RankLost(found[0], self.world, found[1], self.rank)
        try:
            if self.store.check([self._key("lost", "report")]):
                text = self.store.get(self._key("lost", "report")).decode()
                return RankLost(int(text.split("rank ")[1].split()[0]), self.world, "reported by another rank", self.rank)
            last = [int(v) for v in self.store.multi_get(self.keys)]
            silent = [r for r in range(self.world) if r != self.rank and last[r] == first[r]]
            silent = [r for r in silent if not self._finished(r)]
        except Exception:  # noqa: BLE001 - rank zero left during the wait: no evidence either way
            return None
        if silent:
            return RankLost(silent[0], self.world, self._why(silent[0], "its heartbeat stopped"), self.rank)
        if self.rank == 0:
            time.sleep(self.interval_s)  # the others finish their own look before the store goes with this process
        return None


def _launched(trainer: L.Trainer | None) -> list:
    """(global rank, process) of the ranks Lightning launched from this process."""
    if trainer is None:
        return []
    base = trainer.node_rank * trainer.num_devices
    return [(base + i + 1, proc) for i, proc in enumerate(launched_processes(trainer))]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def start_watchdog(timeout_s: float | None, trainer: L.Trainer | None = None) -> None:
    """On every rank once the process group exists (a no-op on one process or with no timeout)."""
    global _ACTIVE
    stop_watchdog()
    if timeout_s is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    _ACTIVE = RankWatchdog(timeout_s, trainer=trainer)
    _ACTIVE.start()


def stop_watchdog() -> None:
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.stop()
        _ACTIVE = None


def explain_failure() -> RankLost | None:
    """Called by the entry points on an unexpected error: the lost rank behind it, if one was lost."""
    global _ACTIVE
    if _ACTIVE is None:
        return None
    watchdog, _ACTIVE = _ACTIVE, None
    lost = watchdog.explain()
    watchdog._stop.set()
    return lost


class WatchRanks(L.Callback):
    """Training's hook: once the process group exists, the ranks agree on the checkpoint they resume
    from and the watchdog starts. It stops when the task ends (:func:`stop_watchdog`)."""

    def __init__(self, timeout_s: float | None, resume: str | None):
        self.timeout_s = timeout_s
        self.resume = resume

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            agree_on_resume(self.resume)
            start_watchdog(self.timeout_s, trainer)
            if _ACTIVE is not None:  # the watchdog ends the node's ranks itself, with its line
                stop_child_process_observer()

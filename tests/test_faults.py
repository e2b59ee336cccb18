"""Faults a cluster deals out (docs/reliability.md): damaged checkpoints, full disks, a lost rank. Each test
makes the fault happen for real (a truncated file, writes refused by the kernel, a rank killed or frozen)
and checks the one line, the files left behind and the resume."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, last_line, run_cli

from hbt.checkpointing import AtomicCheckpointIO, checkpoint_problem, resolve_ckpt_path
from hbt.errors import ConfigError, OutputError
from hbt.tasks import _atomic_write, export_encoder, train


def truncate_copy(source: Path, target: Path, keep: float = 0.5) -> bytes:
    """A copy that did not finish: the first ``keep`` of ``source``'s bytes."""
    data = source.read_bytes()[: int(source.stat().st_size * keep)]
    target.write_bytes(data)
    return data


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    """A real training checkpoint of the default run (two steps)."""
    from conftest import compose_config

    out = tmp_path_factory.mktemp("good")
    overrides = ["logger=csv", "trainer.max_steps=2", "callbacks.retrieval_eval.at_epoch_end=false"]
    train(compose_config("train", overrides, out))
    return out / "checkpoints" / "last.ckpt"


# -- 1. damaged checkpoints -----------------------------------------------------------------------------
@pytest.mark.xdist_group("faults_good_checkpoint")  # shares the module fixture good_checkpoint: built once
def test_checkpoint_problem_tells_a_damaged_file_from_a_good_one(good_checkpoint, tmp_path):
    assert checkpoint_problem(good_checkpoint) is None
    truncate_copy(good_checkpoint, tmp_path / "half.ckpt")
    assert checkpoint_problem(tmp_path / "half.ckpt") == "truncated or not a checkpoint archive"
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert checkpoint_problem(tmp_path / "empty.ckpt") == "truncated or not a checkpoint archive"
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    assert checkpoint_problem(tmp_path / "other.ckpt") == "not a Lightning training checkpoint"


@pytest.mark.xdist_group("faults_good_checkpoint")  # shares the module fixture good_checkpoint: built once
def test_auto_skips_a_damaged_newest_checkpoint_and_keeps_it(good_checkpoint, tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(good_checkpoint, folder / "step600.ckpt")
    damaged = truncate_copy(good_checkpoint, folder / "last.ckpt")
    os.utime(folder / "step600.ckpt", (1, 1))  # the damaged one is the newest
    with caplog.at_level(logging.WARNING, logger="hbt.checkpointing"):
        assert resolve_ckpt_path("auto", tmp_path) == str(folder / "step600.ckpt")
    assert "skipped" in caplog.text and "last.ckpt (truncated or not a checkpoint archive)" in caplog.text
    assert (folder / "last.ckpt.damaged").read_bytes() == damaged and not (folder / "last.ckpt").exists()
    # a second damaged last.ckpt later is kept beside the first, not over it
    truncate_copy(good_checkpoint, folder / "last.ckpt", keep=0.3)
    assert resolve_ckpt_path("auto", tmp_path) == str(folder / "step600.ckpt")
    assert (folder / "last.ckpt.damaged").read_bytes() == damaged and (folder / "last.ckpt.damaged.1").is_file()


@pytest.mark.xdist_group("faults_good_checkpoint")  # shares the module fixture good_checkpoint: built once
def test_auto_with_no_checkpoint_that_loads_is_one_line_and_touches_nothing(good_checkpoint, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    truncate_copy(good_checkpoint, folder / "last.ckpt")
    with pytest.raises(ConfigError, match=r"ckpt_path: auto: no checkpoint in .* loads \(last.ckpt: truncated"):
        resolve_ckpt_path("auto", tmp_path)
    assert (folder / "last.ckpt").is_file() and not list(folder.glob("*.damaged"))


@pytest.mark.xdist_group("faults_good_checkpoint")  # shares the module fixture good_checkpoint: built once
@pytest.mark.parametrize("which", ["last", "explicit"])
def test_last_or_a_path_that_does_not_load_is_one_line_naming_the_file(good_checkpoint, tmp_path, which):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    damaged = truncate_copy(good_checkpoint, folder / "last.ckpt")
    arg = "last" if which == "last" else str(folder / "last.ckpt")
    with pytest.raises(ConfigError) as err:
        resolve_ckpt_path(arg, tmp_path)
    assert str(err.value) == (
        f"config error: ckpt_path: {folder / 'last.ckpt'} does not load (truncated or not a checkpoint archive); "
        "ckpt_path=auto resumes from the newest checkpoint that does"
    )
    assert (folder / "last.ckpt").read_bytes() == damaged


@pytest.mark.slow
def test_a_requeued_run_with_a_damaged_newest_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    """The requeue path end to end, as a user runs it: ``ckpt_path=auto`` in the run directory holding a
    truncated last.ckpt beside an intact periodic checkpoint gives the uninterrupted run's results.json."""
    run = ["logger=csv", "data.batch_size=16", "trainer.max_steps=12", "callbacks.checkpoint.every_n_train_steps=6"]
    run += ["callbacks.checkpoint.save_top_k=-1"]
    full = run_cli("train.py", *run, f"hydra.run.dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-2000:]
    requeued = tmp_path / "requeued" / "checkpoints"
    requeued.mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "step6.ckpt", requeued / "step6.ckpt")
    damaged = truncate_copy(tmp_path / "full" / "checkpoints" / "last.ckpt", requeued / "last.ckpt")
    os.utime(requeued / "step6.ckpt", (1, 1))
    proc = run_cli("train.py", *run, "ckpt_path=auto", f"hydra.run.dir={requeued.parent}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert output.count("ckpt_path=auto: skipped") == 1 and f"resuming from {requeued / 'step6.ckpt'}" in output
    assert (requeued / "last.ckpt.damaged").read_bytes() == damaged
    assert (requeued.parent / "results.json").read_text() == (tmp_path / "full" / "results.json").read_text()


# -- 2. full disks --------------------------------------------------------------------------------------
class FileSizeLimit:
    """Writes past ``limit`` bytes fail in this process (RLIMIT_FSIZE: EFBIG, the way a full disk or a
    quota fails a write midway), for root too, unlike a read-only directory."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


@pytest.mark.xdist_group("faults_good_checkpoint")  # shares the module fixture good_checkpoint: built once
def test_a_checkpoint_write_that_fails_is_one_line_and_leaves_the_earlier_file(good_checkpoint, tmp_path):
    state = torch.load(good_checkpoint, weights_only=True)
    target = tmp_path / "last.ckpt"
    shutil.copy(good_checkpoint, target)
    before = target.read_bytes()
    with FileSizeLimit(100_000), pytest.raises(OutputError) as err:
        AtomicCheckpointIO().save_checkpoint(state, target)
    assert str(err.value) == f"output error: {target}: could not be written (File too large); earlier files are as they were"
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_results_and_export_writes_that_fail_are_one_line_and_leave_nothing_half(tmp_path):
    from hbt.models.encoder import Encoder

    (tmp_path / "results.json").write_text('{"earlier": 1}')
    with FileSizeLimit(8), pytest.raises(OutputError, match=r"results.json: could not be written \(File too large\)"):
        _atomic_write(tmp_path / "results.json", json.dumps({"later": list(range(100))}))
    assert (tmp_path / "results.json").read_text() == '{"earlier": 1}'
    encoder = Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64})
    with FileSizeLimit(10_000), pytest.raises(OutputError, match=r"model: the export could not be written"):
        export_encoder(encoder, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.slow
def test_a_disk_that_fills_during_training_stops_in_one_line_and_auto_resumes(tmp_path):
    """The kernel refuses the training process's writes past half a checkpoint once its first periodic
    checkpoint is on disk (prlimit on the running process): the next checkpoint is one line naming it, the
    first stays loadable, no temporary file is left, and ``ckpt_path=auto`` then finishes the run."""
    import psutil

    run = ["logger=csv", "data.batch_size=8", "trainer.max_steps=200", "callbacks.checkpoint.every_n_train_steps=20"]
    run += ["callbacks.retrieval_eval.at_epoch_end=false"]
    proc = subprocess.Popen([sys.executable, "train.py", *run, f"hydra.run.dir={tmp_path}"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "checkpoints" / "step20.ckpt"
    deadline = time.time() + 180
    while not first.exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # last.ckpt of step 20 follows it
    psutil.Process(proc.pid).rlimit(psutil.RLIMIT_FSIZE, (first.stat().st_size // 2, resource.RLIM_INFINITY))
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1
    assert last_line(stderr) == (
        f"output error: {tmp_path / 'checkpoints' / 'step40.ckpt'}: could not be written (File too large); earlier files are as they were"
    )
    assert "Traceback" not in stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step20.ckpt"]
    assert checkpoint_problem(first) is None and checkpoint_problem(tmp_path / "checkpoints" / "last.ckpt") is None
    resumed = run_cli("train.py", *run[:-2], "trainer.max_steps=24", "ckpt_path=auto", f"hydra.run.dir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / "results.json").is_file()


# -- 3. a lost rank -------------------------------------------------------------------------------------
DDP_RUN = [
    "trainer=ddp_cpu",
    "logger=csv",
    "data.batch_size=8",
    "trainer.max_steps=2000",
    "callbacks.retrieval_eval.at_epoch_end=false",
    "callbacks.checkpoint.every_n_train_steps=10",
    "lost_rank_timeout_s=8",
]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["killed", "frozen", "rank0_killed"])
def test_a_lost_rank_ends_the_job_in_bounded_time_with_one_line(tmp_path, fault):
    """Rank 1 killed (its sockets close: the survivors' next collective fails), or frozen with SIGSTOP
    (its sockets stay open: the survivors block in a collective, as under NCCL, until the watchdog ends
    them), or rank 0 killed (the store it hosts goes with it). Either way the survivor ends with one line
    naming the lost rank within the timeout, no process is left, and the last periodic checkpoint loads."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "train.py", *DDP_RUN, f"hydra.run.dir={tmp_path}"], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 180
    while not (tmp_path / "checkpoints" / "step10.ckpt").exists() and time.time() < deadline:
        time.sleep(0.1)
    ranks = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(ranks) == 2, "rank 1 was not launched"
    lost, survivor = (0, 1) if fault == "rank0_killed" else (1, 0)
    ranks[lost].send_signal(signal.SIGSTOP if fault == "frozen" else signal.SIGKILL)
    start = time.time()
    _, stderr = proc.communicate(timeout=120)  # returns once every rank has closed the shared stderr
    took = time.time() - start
    why = {
        "killed": "its process ended, killed by signal 9",
        "frozen": "no heartbeat for 8 s, lost_rank_timeout_s",
        "rank0_killed": "its process ended",
    }[fault]
    assert last_line(stderr) == (
        f"distributed error: rank {lost} of 2 was lost ({why}); rank {survivor} stopped. "
        "Resume with ckpt_path=auto: the newest checkpoint that loads"
    )
    assert "Traceback" not in stderr and proc.returncode == (1 if survivor == 0 else -9)
    assert took < (8 + 10 if fault == "frozen" else 5), took
    assert not [r for r in ranks if psutil.pid_exists(r.pid) and r.status() != psutil.STATUS_ZOMBIE]
    chosen = resolve_ckpt_path("auto", tmp_path)
    assert chosen is not None and checkpoint_problem(chosen) is None
    if fault == "killed":  # the requeue under DDP: rank 0 skips a damaged last.ckpt, rank 1 takes its choice
        truncate_copy(Path(chosen), tmp_path / "checkpoints" / "last.ckpt")
        os.utime(tmp_path / "checkpoints" / "last.ckpt")
        resumed = run_cli("train.py", *DDP_RUN[:3], "trainer.max_steps=14", *DDP_RUN[4:], "ckpt_path=auto", f"hydra.run.dir={tmp_path}")
        output = resumed.stdout + resumed.stderr
        assert resumed.returncode == 0, output[-2000:]
        assert output.count("ckpt_path=auto: skipped") == 1 and (tmp_path / "results.json").is_file()

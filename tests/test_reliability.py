"""Exact resume, interrupts that leave a checkpoint, a NaN guard, deterministic results, safe outputs."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, last_line, run_cli

from hbt.errors import ConfigError, TrainingDiverged
from hbt.tasks import train

# 338 training items at batch 16: 21 steps per epoch, so step 26 lies in the second epoch.
RUN = [
    "logger=csv",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.max_steps=26",
    "callbacks.checkpoint.every_n_train_steps=5",
    "callbacks.checkpoint.save_top_k=-1",
    "callbacks.retrieval_eval.at_epoch_end=false",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import compose_config

    out = tmp_path_factory.mktemp("uninterrupted")
    train(compose_config("train", RUN, out))
    return out


@pytest.mark.xdist_group("reliability_uninterrupted")  # shares the module fixture uninterrupted: built once
@pytest.mark.slow
@pytest.mark.parametrize("step", [10, 25])  # mid first epoch; mid second epoch
def test_resume_from_a_mid_epoch_checkpoint_gives_identical_results(uninterrupted, make_cfg, tmp_path, step):
    checkpoint = uninterrupted / "checkpoints" / f"step{step}.ckpt"
    assert checkpoint.is_file()
    train(make_cfg("train", [*RUN, f"ckpt_path={checkpoint}"], tmp_path / "resumed"))
    assert (tmp_path / "resumed" / "results.json").read_text() == (uninterrupted / "results.json").read_text()


@pytest.mark.xdist_group("reliability_uninterrupted")  # shares the module fixture uninterrupted: built once
@pytest.mark.slow
def test_same_seed_same_results(uninterrupted, make_cfg, tmp_path):
    train(make_cfg("train", RUN, tmp_path / "again"))
    assert (tmp_path / "again" / "results.json").read_text() == (uninterrupted / "results.json").read_text()


@pytest.mark.slow
def test_sigterm_leaves_a_checkpoint_and_ckpt_path_last_resumes(tmp_path):
    cmd = [
        sys.executable,
        "train.py",
        "logger=csv",
        "trainer.max_epochs=50",
        "callbacks.retrieval_eval.at_epoch_end=false",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "csv" / "metrics.csv").exists() and time.time() < deadline:  # first logged steps
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "interrupted at step" in stderr and "ckpt_path=last" in stderr
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "results.json").exists()
    import torch

    step = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step > 0
    resumed = run_cli(
        "train.py",
        "logger=csv",
        f"trainer.max_steps={step + 2}",
        "callbacks.retrieval_eval.at_epoch_end=false",
        "ckpt_path=last",
        f"hydra.run.dir={tmp_path}",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / "results.json").is_file()


def test_ckpt_path_last_without_a_checkpoint(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path: no checkpoint at .*last.ckpt; point hydra.run.dir"):
        train(make_cfg("train", ["logger=csv", "ckpt_path=last"], tmp_path / "fresh"))


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints(make_cfg, tmp_path):
    # An absurd learning rate makes the tiny model's loss overflow within a few steps.
    overrides = [
        "logger=csv",
        "trainer.max_steps=60",
        "optim.optimizer.lr=1e30",
        "trainer.gradient_clip_val=null",
        "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.retrieval_eval.at_epoch_end=false",
    ]
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step \d+") as err:
        train(make_cfg("train", overrides, tmp_path / "nan"))
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    if err.value.step > 0:
        import torch

        state = torch.load(last, weights_only=False)
        assert state["global_step"] == err.value.step  # the last good step, not the diverged one
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_cli_exits_nonzero_with_one_line_and_loses_nothing(tmp_path):
    (tmp_path / "results.json").write_text('{"earlier": "results"}')
    proc = run_cli("train.py", "logger=csv", "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert last_line(proc.stderr) == f"output error: {tmp_path / 'results.json'}: already exists; choose a new hydra.run.dir"
    assert json.loads((tmp_path / "results.json").read_text()) == {"earlier": "results"}


@pytest.mark.parametrize(
    "args,line",
    [
        (["loss.temperature=0"], "config error: loss.temperature: must be > 0, got 0"),
        (["+sampler.nosuch=1"], "config error: sampler.nosuch: not a parameter of hbt.sampling.HybridBatchSampler (it takes: "),
        (
            ["model=xlmr_base", "model.name_or_path=/nonexistent/model-dir"],
            "config error: model.name_or_path: cannot load '/nonexistent/model-dir'",
        ),
    ],
)
@pytest.mark.slow
def test_errors_inside_instantiated_objects_are_one_line(tmp_path, args, line):
    proc = run_cli("train.py", "logger=csv", *args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith(line)
    assert "Traceback" not in proc.stderr


# metrics.csv is flushed every 5 steps, so the test interrupts early in a 60-step run.
DDP_RUN = [
    "trainer=ddp_cpu",
    "logger=csv",
    "data.batch_size=8",
    "trainer.max_steps=60",
    "callbacks.retrieval_eval.at_epoch_end=false",
    "callbacks.checkpoint.every_n_train_steps=1000",
    "trainer.log_every_n_steps=5",
    "+logger.csv.flush_logs_every_n_steps=5",
]


@pytest.mark.slow
def test_sigterm_under_ddp_checkpoints_exits_and_resumes_exactly(tmp_path):
    """A cluster's pre-emption under DDP: SIGTERM to every rank, or to rank zero alone, writes last.ckpt and
    every process exits within seconds; ckpt_path=last then gives the uninterrupted run's results.json."""
    import psutil
    import torch

    for target in ("all", "rank0"):
        run = tmp_path / target
        proc = subprocess.Popen(
            [sys.executable, "train.py", *DDP_RUN, f"hydra.run.dir={run}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 180
        while not (run / "csv" / "metrics.csv").exists() and time.time() < deadline:  # both ranks are training
            time.sleep(0.2)
        ranks = [proc.pid] + [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
        assert len(ranks) >= 2, "rank 1 was not launched"
        for pid in ranks if target == "all" else ranks[:1]:
            psutil.Process(pid).send_signal(signal.SIGTERM)
        start = time.time()
        _, stderr = proc.communicate(timeout=60)
        assert time.time() - start < 30, "took too long to stop"
        assert proc.returncode != 0 and "interrupted at step" in stderr, stderr[-2000:]
        assert not [pid for pid in ranks if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
        assert 0 < step < 60 and not (run / "checkpoints" / ".last.ckpt.tmp").exists()
    full = run_cli("train.py", *DDP_RUN, f"hydra.run.dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-2000:]
    resumed = run_cli("train.py", *DDP_RUN, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'all'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / "all" / "results.json").read_text() == (tmp_path / "full" / "results.json").read_text()


def test_ckpt_path_auto_starts_fresh_without_checkpoints(tmp_path):
    """(Resuming, and skipping damaged checkpoints: tests/test_faults.py.)"""
    from hbt.checkpointing import resolve_ckpt_path

    assert resolve_ckpt_path("auto", tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    assert resolve_ckpt_path("auto", tmp_path) is None


@pytest.mark.parametrize(
    "overrides,multirun,line",
    [
        (["loss.chunk_size=4"], False, "config error: loss.chunk_size: renamed to grad_cache.chunk_size (use grad_cache.chunk_size=4)"),
        (["paths.shared_data_dir=/d"], False, "config error: paths.shared_data_dir: renamed to paths.data_dir (use paths.data_dir=/d)"),
        (["sampler.ratoi=0.3"], False, "config error: sampler.ratoi: no such key (a new key is added with +sampler.ratoi=...)"),
        (["model=xlmr-base"], False, "config error: model: no option 'xlmr-base' (available: labse, mbart_large, mbert, me5_base"),
        (["model=mbert,xlmr_base"], False, "config error: model: several values (mbert,xlmr_base) sweep only with -m"),
        (["model=mbert,xlmr-base", "sampler.ratio=0,0.5"], True, "config error: model: no option 'xlmr-base'"),
        (["sampler.ratio=0,0.5", "trainer=ddp,gpus"], True, "config error: trainer: no option 'gpus'"),
        (["sampler.ratio=["], False, "config error: sampler.ratio=[: cannot parse it"),
    ],
)
def test_a_bad_command_line_is_one_line_naming_the_key(overrides, multirun, line):
    from hbt.cli import composition_error

    assert composition_error(ROOT / "conf", "train", overrides, multirun).startswith(line)


@pytest.mark.parametrize(
    "overrides,line",
    [
        # what the sampling sweepers accept passes: Optuna's interval, tag(log, ...), range, choice, and its
        # search space given as hydra.sweeper.params.<key>
        (["hydra/sweeper=optuna", "sampler.ratio=interval(0,1)"], None),
        (["hydra/sweeper=optuna", "optim.optimizer.lr=tag(log, interval(1e-5, 1e-3))", "sampler.ratio=range(0,1,step=0.5)"], None),
        (["hydra/sweeper=optuna", "model=choice(mbert,xlmr_base)", "hydra.sweeper.n_trials=4"], None),
        (["hydra/sweeper=optuna", "hydra.sweeper.params.sampler.ratio=interval(0,1)"], None),
        (["hydra/sweeper=optuna", "+hydra.sweeper.params.sampler.ratio=interval(0,1)"], None),
        # ... and is still checked: the searched key, the options of a choice
        (["hydra/sweeper=optuna", "sampler.ratoi=interval(0,1)"], "config error: sampler.ratoi: no such key"),
        (["hydra/sweeper=optuna", "hydra.sweeper.params.sampler.ratoi=interval(0,1)"], "config error: sampler.ratoi: no such key"),
        (["hydra/sweeper=optuna", "model=choice(mbert,xlmr-base)"], "config error: model: no option 'xlmr-base'"),
        # a search space without a sweeper that samples it
        (
            ["sampler.ratio=interval(0,1)"],
            "config error: sampler.ratio: interval(0,1) is a search space that a sampling sweeper draws from",
        ),
        (["hydra/sweeper=optuns"], "config error: hydra/sweeper: no option 'optuns' (available: "),
    ],
)
def test_sampling_sweepers_syntax_passes_the_check_and_is_still_checked(overrides, line):
    from hbt.cli import composition_error

    error = composition_error(ROOT / "conf", "train", overrides, True)
    assert error == line if line is None else error.startswith(line), error


def test_a_sweepers_search_space_in_the_config_is_checked(tmp_path):
    """``hydra.sweeper.params`` written in a config (an experiment's search space) is checked like the
    command line's: each key at both ends of its interval."""
    from hbt.cli import composition_error

    space = (
        "defaults:\n  - override hydra/sweeper: optuna\n  - _self_\nx: 0.5\nhydra:\n  sweeper:\n    params:\n      {key}: interval(0, 1)\n"
    )
    (tmp_path / "good.yaml").write_text(space.format(key="x"))
    (tmp_path / "bad.yaml").write_text(space.format(key="y"))
    assert composition_error(tmp_path, "good", [], True) is None
    assert composition_error(tmp_path, "bad", [], True).startswith("config error: y: no such key")


def test_a_good_command_line_passes_the_check():
    from hbt.cli import composition_error

    conf = ROOT / "conf"
    assert composition_error(conf, "train", ["model=mbert", "sampler.ratio=0.3", "+data.seed=1"], False) is None
    assert (
        composition_error(conf, "train", ["experiment=mbert_ratio_sweep", "model=mbert,xlmr_base", "hydra.sweep.dir=/tmp/s"], True) is None
    )
    assert composition_error(conf, "evaluate", ["eval=[xquad_r,tatoeba]", "model=labse"], False) is None


def test_a_misspelt_key_stops_train_py_in_one_line_before_anything_starts(tmp_path):
    proc = run_cli("train.py", "sampler.ratoi=0.3", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert (proc.stdout + proc.stderr).strip() == "config error: sampler.ratoi: no such key (a new key is added with +sampler.ratoi=...)"
    assert not (tmp_path / "run").exists()

"""W&B offline runs hold what the dashboards need; a failing multirun job does not stop the sweep."""

import json

import pytest
from conftest import FAST, last_line, run_cli
from wandb_offline import summarize

from hbt.tasks import train
from hbt.tracking import resolve_mode


@pytest.mark.slow
def test_offline_wandb_run_holds_config_curves_tables_and_artifacts(make_cfg, tmp_path):
    cfg = make_cfg(
        "train",
        [*FAST, "logger=wandb", "trainer.log_every_n_steps=1", "logger.wandb.group=sweep-a", "sampler.ratio=0.25"],
        tmp_path / "run",
    )
    train(cfg)
    from hbt.tracking import finish_wandb

    finish_wandb()
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    run = summarize(run_dir)
    assert run["closed"], "the run file never got its exit record"
    assert run["name"] == "tiny-ratio0.25" and run["group"] == "sweep-a"
    assert json.loads(run["config"]["sampler"])["ratio"] == 0.25
    for key in (
        "train/loss",
        "train/accuracy",
        "train/emb_std",
        "train/mono_share",
        "train/epoch_mono_pair_share",
        "lr-AdamW/pg1",
        "test/toy/multi/rank_distance",
        "test/toy/multi/peer@10",
        "test/toy/multi/own_share@10",
    ):
        assert key in run["history"], key
    assert any(k.startswith("test/toy/cross/pairs/") for k in run["history"])  # the per-pair wandb.Table
    assert any(k.startswith("test/toy/map_heatmap/") for k in run["history"])  # the heatmap image
    assert any(k.startswith("test/toy/last_language_heatmap/") for k in run["history"])  # whose relevant ranks last
    assert {"results", "model"} <= {kind for kind, _ in run["artifacts"]}
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))


def test_mode_is_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"


@pytest.mark.slow
def test_a_failing_multirun_job_does_not_stop_the_others_but_fails_the_sweep(tmp_path):
    proc = run_cli("train.py", "-m", "sampler.ratio=2,0.5", *FAST, "logger=wandb", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "config error: sampler.ratio: must lie in [0, 1], got 2" in proc.stderr
    assert last_line(proc.stderr) == (
        f"sweep error: 1 of 2 jobs failed (0); {tmp_path / '0'}: config error: sampler.ratio: must lie in [0, 1], got 2"
    )
    assert not (tmp_path / "0" / "results.json").exists() and not (tmp_path / "1" / "FAILED").exists()
    # The job that trained (W&B logger, export) printed none of the third-party noise hbt keeps out.
    for noise in ("💡 Tip", "anonymous setting", "LeafSpec", "Writing model shards"):
        assert noise not in proc.stdout + proc.stderr, noise
    assert json.loads((tmp_path / "1" / "results.json").read_text())["toy"]["mono"]["macro"]["map"] >= 0
    runs = list((tmp_path / "1" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and summarize(runs[0])["name"] == "tiny-ratio0.5"
    assert summarize(runs[0])["group"] == f"sweep-{tmp_path.name}"  # one W&B group per sweep
    # The report command collects the sweep into one table.
    from hbt.report import main as report

    assert report([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report.md").read_text().splitlines()
    assert len(table) == 3 and "toy/multi/rank_distance" in table[0] and "| tiny | 0.5" in table[2]
    assert (tmp_path / "report.csv").read_text().count("\n") == 2


@pytest.mark.slow
def test_analysis_notebook_runs_on_a_sweep_it_makes(tmp_path):
    import os

    import nbformat
    from conftest import ROOT
    from nbclient import NotebookClient

    sweep = tmp_path / "sweep"
    proc = run_cli("train.py", "-m", "sampler.ratio=0,1", *FAST, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "stored with outputs"
    os.environ["HBT_SWEEP_DIR"] = str(sweep)
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        del os.environ["HBT_SWEEP_DIR"]
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the ratio plots and one heatmap per run
    html = "".join(o.get("data", {}).get("text/html", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "p (Holm)" in html and "verdict" in html  # ratio 1 against ratio 0 on per-query values
    assert "own_share@10" in html and "ranked last most often" in html  # the language-bias table of each run


def test_step_statistics_are_those_of_the_step_the_logger_writes(tmp_path):
    """Statistics are logged only on logging steps; each written row holds that step's own values."""
    import csv
    from functools import partial

    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from hbt.data.datamodule import ParallelDataModule
    from hbt.data.toy import toy_items
    from hbt.loss import InfoNCELoss
    from hbt.models.encoder import Encoder
    from hbt.module import RetrieverModule
    from hbt.sampling import HybridBatchSampler

    class StepMarkedLoss(InfoNCELoss):
        trainer = None

        def forward(self, *args, **kwargs):
            loss, stats = super().forward(*args, **kwargs)
            return loss, {**stats, "marker": torch.tensor(float(self.trainer.global_step))}

    items = toy_items("train", ["en", "ru", "zh"])
    dm = ParallelDataModule(train=lambda: items, sampler=partial(HybridBatchSampler, ratio=0.5, seed=3), batch_size=16)
    encoder = Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64})
    dm.attach_tokenizer(encoder.text_tokenizer)
    loss = StepMarkedLoss()
    trainer = L.Trainer(
        max_steps=7,
        log_every_n_steps=3,
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    loss.trainer = trainer
    trainer.fit(RetrieverModule(encoder, loss, optimizer=torch.optim.AdamW), datamodule=dm)
    with open(tmp_path / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    assert [int(row["step"]) for row in rows] == [2, 5]  # every third step
    for row in rows:
        assert float(row["train/marker"]) == int(row["step"])
        for key in ("train/accuracy", "train/pos_sim", "train/neg_sim", "train/emb_std", "train/mono_share"):
            assert row[key] != "", key


def test_finishing_without_a_wandb_run_does_not_import_wandb():
    """Every run ends in finish_wandb; without a W&B logger it must not import wandb (about a second per
    process, per DDP rank) just to find there is no run."""
    import subprocess
    import sys

    code = "import sys; from hbt.tracking import finish_wandb; finish_wandb(); print('wandb' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

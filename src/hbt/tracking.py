"""Experiment tracking: a W&B logger that never fails the run.

With credentials it logs online; without (or with WANDB_MODE=offline, or when the service cannot be
reached) it writes an offline run under ``save_dir`` that ``wandb sync`` uploads later.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
from pathlib import Path

from hbt.results import Results

log = logging.getLogger(__name__)
MODES = ("auto", "online", "offline", "disabled")


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1]) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto``: WANDB_MODE if set, else online with credentials and offline without."""
    if mode not in MODES:
        from hbt.errors import ConfigError

        raise ConfigError("logger.wandb.mode", f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if has_wandb_credentials() else "offline"


def sweep_group() -> str | None:
    """In a Hydra multirun, the sweep's directory name, so each sweep is one W&B group by default."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"sweep-{Path(HydraConfig.get().sweep.dir).name}"
    return None


def wandb_logger(
    project: str = "hbt",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    save_dir: str = ".",
    mode: str = "auto",
    log_model: bool = False,
    init_timeout: int = 60,
):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    resolved = resolve_mode(mode)
    group = group or sweep_group()
    Path(save_dir).mkdir(parents=True, exist_ok=True)

    def make(run_mode: str) -> WandbLogger:
        logger = WandbLogger(
            project=project,
            name=name,
            group=group,
            tags=list(tags or []),
            save_dir=save_dir,
            log_model=log_model,
            mode=run_mode,
            settings=wandb.Settings(init_timeout=init_timeout, silent=True),
        )
        # Lightning always passes wandb's deprecated `anonymous` (as None), which makes wandb warn on every run.
        logger._wandb_init.pop("anonymous", None)
        return logger

    logger = make(resolved)
    try:
        _ = logger.experiment  # start the run now, so a network failure is handled here and not mid-training
    except Exception as err:  # any failure to reach W&B must not cost the run
        if resolved != "online":
            raise
        log.warning("W&B online start failed (%s); logging offline, `wandb sync %s` later", err, save_dir)
        logger = make("offline")
        _ = logger.experiment
    return logger


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any, so the next multirun job starts a fresh one. Where wandb was never
    imported there is no run (and importing it only to find that out would cost seconds per run)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def wandb_runs(loggers) -> list:
    """The W&B runs behind the given Lightning loggers."""
    from lightning.pytorch.loggers import WandbLogger

    return [logger.experiment for logger in loggers if isinstance(logger, WandbLogger)]


def log_pair_tables(run, results: Results, prefix: str) -> None:
    """Per-language-pair metrics as ``wandb.Table``s (the multi setting's language-bias metrics included) and,
    as images, the query x candidate mAP heatmap and the multi setting's query language x language ranked
    last heatmap."""
    import matplotlib.pyplot as plt
    import wandb

    from hbt.report import last_language_matrix, pair_matrix, plot_pair_heatmap

    for dataset, by_setting in results.items():
        for setting, block in by_setting.items():
            pairs = {key: pair.to_json() for key, pair in block.pairs.items()}
            metrics = sorted({m for values in pairs.values() for m in values})
            rows = [[pair, *(values.get(m) for m in metrics)] for pair, values in pairs.items()]
            run.log({f"{prefix}/{dataset}/{setting}/pairs": wandb.Table(columns=["pair", *metrics], data=rows)})
        langs, matrix = pair_matrix(by_setting, "map")
        if langs:
            fig = plot_pair_heatmap(langs, matrix, f"{dataset}: mAP by language pair")
            run.log({f"{prefix}/{dataset}/map_heatmap": wandb.Image(fig)})
            plt.close(fig)
        queries, last, matrix = last_language_matrix(by_setting)
        if queries:  # the multi setting's language bias: whose relevant passage ranks last
            fig = plot_pair_heatmap(queries, matrix, f"{dataset}: language ranked last (share)", last, "language of the last relevant")
            run.log({f"{prefix}/{dataset}/last_language_heatmap": wandb.Image(fig)})
            plt.close(fig)


def log_final_results(loggers, results: Results, results_path: Path, model_dir: Path | None) -> None:
    """Tables, heatmaps, and ``results.json`` with ``per_query.parquet`` (+ the exported model) as
    artifacts of every W&B run."""
    runs = wandb_runs(loggers)
    if not runs:  # no W&B logger: wandb is not needed (nor imported)
        return
    import wandb

    for run in runs:
        log_pair_tables(run, results, "test")
        for dataset, by_setting in results.items():  # TREC benchmarks: the corpus that was scored
            for setting, block in by_setting.items():
                if block.corpus is not None:
                    run.summary[f"test/{dataset}/{setting}/corpus"] = block.corpus
        artifact = wandb.Artifact(f"results-{run.id}", type="results")
        artifact.add_file(str(results_path))
        per_query = results_path.with_name("per_query.parquet")
        if per_query.exists():  # the per-query values beside it (hbt.tasks.write_results)
            artifact.add_file(str(per_query))
        run.log_artifact(artifact)
        if model_dir is not None and model_dir.exists():
            model = wandb.Artifact(f"model-{run.id}", type="model")
            model.add_dir(str(model_dir))
            run.log_artifact(model)

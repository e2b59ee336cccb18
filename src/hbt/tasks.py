"""Task functions behind the entry points: ``train(cfg)`` and ``evaluate(cfg)``.

Both return ``(metrics, objects)`` and write ``results.json`` (and the resolved ``config.yaml``) into
the run directory (its shape: :mod:`hbt.results`).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hbt.checkpointing import (
    CONFIG_KEY,
    INTERRUPTS,
    AtomicCheckpointIO,
    atomic_file,
    encoder_state,
    read_checkpoint,
    resolve_ckpt_path,
    share_choice,
)
from hbt.cli import check_targets
from hbt.compat import fsdp_full_precision_in_eval
from hbt.errors import ConfigError, HbtError, OutputError, hbt_cause, write_failure
from hbt.eval.retrieval import Evaluator
from hbt.eval.subsets import instantiate_benchmarks
from hbt.model_card import write_model_card
from hbt.models.encoder import Encoder
from hbt.module import RetrieverModule
from hbt.plan import check_fits_cpu, plan_training
from hbt.results import Results, dumps, flatten_macro, results_table
from hbt.strategies import fsdp_strategy, full_parameters
from hbt.sweeps import clear_failure, record_failure
from hbt.tracking import finish_wandb, log_final_results
from hbt.watchdog import WatchRanks, check_timeout, explain_failure, start_watchdog, stop_watchdog

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
PER_QUERY_FILE = "per_query.parquet"


def optimized_value(cfg: DictConfig, metrics: dict | None) -> float | None:
    """What train.py returns to a sweeper: ``optimized_metric`` (null: the first benchmark's multi/map,
    or its first MAP where it has no multi setting, or the first metric where none is a MAP). A name the finished run did not compute is an error
    (the results are written by then)."""
    if not metrics:
        return None
    name = cfg.get("optimized_metric")
    if name is None:
        maps = [key for key in metrics if key.endswith("/map")]
        name = next((key for key in maps if key.split("/")[2] == "multi"), maps[0] if maps else next(iter(metrics)))
        return metrics[name]
    if name not in metrics:
        raise ConfigError("optimized_metric", f"{name} is not among this run's metrics ({', '.join(sorted(metrics)[:6])}, ...)")
    return metrics[name]


def train(cfg: DictConfig) -> tuple[dict, dict]:
    plan = plan_training(cfg)
    cfg = plan.config  # the resolved config: what is built below and what config.yaml records
    out = _prepare_output(cfg)
    log.info("training in %s (trainer.precision)", plan.precision)
    check_fits_cpu(plan)
    watch = check_timeout(cfg.get("lost_rank_timeout_s"))
    resume = resolve_ckpt_path(cfg.ckpt_path, out)  # before anything is built: a damaged checkpoint is skipped or one line
    L.seed_everything(cfg.seed, workers=True)
    encoder: Encoder = instantiate(cfg.model)
    if plan.compile is not None:
        log.info("training steps run the backbone through torch.compile (mode %s; compile)", plan.compile)
        encoder.compile_for_training(plan.compile)
    module = RetrieverModule(
        encoder,
        plan.loss,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler),
        grad_cache=plan.grad_cache,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler, _convert_="all"), _convert_="all")
    datamodule.attach_tokenizer(encoder.text_tokenizer)
    callbacks = [instantiate(c, _convert_="all") for c in cfg.callbacks.values()]
    callbacks.append(WatchRanks(watch, resume))  # under DDP: one resume choice, and a lost rank ends the job
    loggers = make_loggers(cfg)
    strategy = {"strategy": fsdp_strategy(cfg.trainer.strategy, encoder)} if plan.fsdp else {}
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()], **strategy)
    for logger in loggers:
        logger.log_hyperparams(module.run_config)
    with fsdp_full_precision_in_eval() if plan.fsdp else contextlib.nullcontext():
        with share_choice(out, resume):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)

    metrics: dict = {}
    if plan.fsdp:
        export_sharded(trainer, cfg, out / "model")
    with full_parameters(trainer):  # under FSDP every rank gathers the whole encoder for the evaluation
        if trainer.is_global_zero and not plan.fsdp:
            export_encoder(encoder, out / "model")
        # Every rank takes part: under DDP the evaluator encodes each benchmark sharded across ranks.
        results, per_query = run_evaluation(cfg, encoder, verbose=trainer.is_global_zero)
    if trainer.is_global_zero:
        metrics = flatten_macro(results, "test")
        for logger in loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        write_results(out, results, cfg, per_query)
        write_model_card(out / "model", module.run_config, results, datamodule.store.languages, trainer.global_step)
        log_final_results(loggers, results, out / RESULTS_FILE, out / "model")
    trainer.strategy.barrier()
    stop_watchdog()  # the ranks now leave at their own pace
    if trainer.is_global_zero:
        optimized_value(cfg, metrics)  # a name the run did not compute stops here, after the results are written
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def make_loggers(cfg: DictConfig) -> list:
    """The selected loggers. An experiment's settings for a logger that is not selected (its W&B group
    and tags under ``logger=csv``) leave an entry without ``_target_``: nothing to start."""
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if "_target_" in c]


def launch_devices(trainer_cfg: DictConfig | None):
    """Start the evaluation processes the ``trainer`` config asks for (``trainer=ddp_cpu``: 2 CPU
    processes; on a GPU host, by default one per GPU) with Lightning Fabric, which re-runs the script
    per rank and joins them in one process group. Evaluation is inference only, so every multi-device
    strategy (FSDP included) becomes DDP: each rank holds the whole encoder and encodes its shard."""
    from lightning.fabric import Fabric

    trainer_cfg = trainer_cfg or {}
    accelerator, devices = trainer_cfg.get("accelerator", "auto"), trainer_cfg.get("devices", "auto")
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=trainer_cfg.get("num_nodes", 1) or 1, strategy="auto")
    if fabric.world_size > 1:
        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=trainer_cfg.get("num_nodes", 1) or 1, strategy="ddp")
    fabric.launch()
    return fabric


def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    check_targets(cfg)
    out = _prepare_output(cfg)
    watch = check_timeout(cfg.get("lost_rank_timeout_s"))
    fabric = launch_devices(cfg.get("trainer"))
    start_watchdog(watch)
    L.seed_everything(cfg.seed, workers=True)
    evaluator: Evaluator = instantiate(cfg.evaluator, _convert_="all")  # its bad values stop before the model loads
    encoder = load_encoder(cfg)
    encoder = encoder.to(fabric.device)
    results, per_query = run_evaluation(cfg, encoder, verbose=fabric.is_global_zero, evaluator=evaluator)
    stop_watchdog()  # encoding is over: rank 0 writes alone
    if not fabric.is_global_zero:  # the other ranks took part in encoding; rank 0 writes and logs
        return {}, {"encoder": encoder}
    metrics = flatten_macro(results, "test")
    loggers = make_loggers(cfg)
    write_results(out, results, cfg, per_query)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(metrics)
    log_final_results(loggers, results, out / RESULTS_FILE, None)
    for logger in loggers:
        logger.finalize("success")
    return metrics, {"encoder": encoder}


def run_evaluation(cfg: DictConfig, encoder: Encoder, verbose: bool = True, evaluator: Evaluator | None = None):
    """Every configured benchmark: ``(results, per-query table)`` (see ``Evaluator.query_table``)."""
    evaluator = evaluator or instantiate(cfg.evaluator, _convert_="all")
    benchmarks, subsets = instantiate_benchmarks(cfg.get("eval"))
    for bench in benchmarks.values():
        log.info("evaluating on %s", bench.summary())
    results = evaluator.run(encoder, benchmarks, subsets, run_dir=Path(cfg.paths.output_dir) / "runs")
    if verbose:
        print(results_table(results), flush=True)
    return results, evaluator.query_table()


def load_encoder(cfg: DictConfig) -> Encoder:
    """The encoder an evaluation or mining run uses: a training checkpoint (``ckpt_path``), else
    ``model`` (a hub name or local directory, exported hbt models included)."""
    if cfg.ckpt_path:
        return encoder_from_checkpoint(cfg.ckpt_path)
    if cfg.model.get("name_or_path") is None:
        raise ConfigError(
            "ckpt_path",
            "the tiny default model is random-init: give ckpt_path=<training checkpoint> or model.name_or_path=<hub name or dir>",
        )
    return instantiate(cfg.model)


def encoder_from_checkpoint(path: str | os.PathLike) -> Encoder:
    """Rebuild the encoder a training run saved: its model config is stored in the checkpoint."""
    checkpoint = read_checkpoint(path)
    encoder: Encoder = instantiate(checkpoint[CONFIG_KEY]["model"])
    encoder.load_state_dict(encoder_state(checkpoint["state_dict"]))
    return encoder


def export_sharded(trainer: L.Trainer, cfg: DictConfig, directory: Path) -> None:
    """The export under FSDP: every rank takes part in gathering the full state dict onto rank 0 (in CPU
    memory), which loads it into a fresh, unwrapped encoder of the same config and exports that. Saving
    the FSDP-wrapped encoder itself would run FSDP's state-dict hooks over layers that the export
    rewrites (merging LoRA adapters replaces them), which FSDP refuses. Rank 0 needs CPU memory for the
    model twice (the gathered weights and the fresh encoder)."""
    state = trainer.strategy.lightning_module_state_dict()
    if trainer.is_global_zero:
        plain: Encoder = instantiate(cfg.model)
        plain.load_state_dict(encoder_state(state))
        export_encoder(plain, directory)
    del state
    trainer.strategy.barrier()


def export_encoder(encoder: Encoder, directory: Path) -> None:
    """Write the exported model next to the final location, then move it in one rename. A write that fails
    (no space, quota, permissions) removes the partial copy and is one line naming the directory."""
    if directory.exists():
        raise OutputError(str(directory), "already exists; not overwriting an exported model")
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        encoder.save_pretrained(tmp)
        tmp.rename(directory)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        why = write_failure(err)
        if why is None:
            raise
        raise OutputError(str(directory), f"the export could not be written ({why}); nothing was left there") from None


def write_results(out: Path, results: Results, cfg: DictConfig, per_query=None) -> None:
    """config.yaml, results.json and, beside it, the per-query values (``per_query.parquet``: one row per
    query and language pair, the values results.json averages), each written atomically."""
    _atomic_write(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if per_query is not None:
        import pyarrow.parquet as pq

        with atomic_file(out / PER_QUERY_FILE) as tmp:
            pq.write_table(per_query, tmp, compression="zstd")
    _atomic_write(out / RESULTS_FILE, dumps(results))
    log.info("results written to %s", out / RESULTS_FILE)


def _atomic_write(path: Path, text: str) -> None:
    """``path`` holds its earlier content or ``text``, never part of it; a failed write is one line."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _prepare_output(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    if (out / RESULTS_FILE).exists():
        raise OutputError(str(out / RESULTS_FILE), "already exists; choose a new hydra.run.dir")
    out.mkdir(parents=True, exist_ok=True)
    return out


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


NO_TIPS = _NoTips()


def quiet_third_party() -> None:
    """Keep third-party noise out of a run's output: Lightning's advertising tip, a deprecation warning
    raised inside Lightning's own code, and transformers' progress bars where output is no terminal (a
    one-shard "Writing model shards" bar per export in every log)."""
    from lightning_utilities.core import rank_zero

    rank_zero.log.addFilter(NO_TIPS)  # the logger Lightning installs there; adding the filter twice is a no-op
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def run_task(task: Callable[[DictConfig], tuple[dict, dict]], cfg: DictConfig) -> dict | None:
    """Run a task the way every entry point does: one-line errors, W&B always finished.

    In a multirun a failing job is logged, leaves its error in ``<job dir>/FAILED`` and the sweep goes
    on; the sweep then exits non-zero (:mod:`hbt.sweeps`). A single run exits non-zero at once.
    """
    quiet_third_party()
    # The last thing at exit: the interpreter's final garbage collection would walk every object of
    # torch, transformers and Lightning (seconds per process, per DDP rank); frozen objects are skipped.
    atexit.unregister(gc.freeze)  # once, however many multirun jobs this process runs
    atexit.register(gc.freeze)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:
        clear_failure()
    try:
        try:
            metrics, _ = task(cfg)
        except Exception as wrapped:  # hydra.utils.instantiate wraps errors raised by the objects it builds
            cause = hbt_cause(wrapped) or explain_failure()  # a failed collective: the rank that was lost
            if cause is None or cause is wrapped:
                raise
            raise cause from None
        finally:
            stop_watchdog()
    except HbtError as err:
        finish_wandb(exit_code=1)
        print(str(err), file=sys.stderr, flush=True)
        if multirun:
            record_failure(str(err))
            return None
        raise SystemExit(1) from None
    except INTERRUPTS:
        finish_wandb(exit_code=1)
        raise SystemExit(1) from None
    except Exception as err:
        finish_wandb(exit_code=1)
        if multirun:
            log.error("job failed:\n%s", traceback.format_exc())
            record_failure(f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
            return None
        raise
    finish_wandb(exit_code=0)
    return metrics

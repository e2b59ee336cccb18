"""Runs the configured retrieval evaluations during training and logs macro metrics to every logger."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import lightning as L
from hydra.utils import instantiate

from hbt.eval.benchmark import RetrievalBenchmark
from hbt.eval.retrieval import Evaluator
from hbt.eval.subsets import instantiate_benchmarks
from hbt.results import Results, flatten_macro
from hbt.strategies import full_parameters
from hbt.tracking import log_pair_tables, wandb_runs


class RetrievalEvalCallback(L.Callback):
    """Evaluates ``pl_module.encoder`` every ``every_n_steps`` optimizer steps and/or at epoch ends.

    Benchmarks are built lazily (first use) on every rank; encoding is sharded across ranks;
    without ``benchmarks`` it uses the datamodule's ``validation`` factories.
    """

    def __init__(
        self,
        evaluator: Evaluator | Mapping,
        benchmarks: Mapping[str, Callable[[], RetrievalBenchmark] | RetrievalBenchmark | Mapping] | None = None,
        every_n_steps: int | None = None,
        at_epoch_end: bool = True,
        prefix: str = "val",
    ):
        # From the config (conf/callbacks/default.yaml, not instantiated recursively) both arrive as
        # configs: the evaluator is built here, the benchmarks at first use, with their query subsets.
        self.benchmark_factories = benchmarks
        self.evaluator = evaluator if isinstance(evaluator, Evaluator) else instantiate(evaluator, _convert_="all")
        self._subsets: dict = {}
        self.every_n_steps = every_n_steps
        self.at_epoch_end = at_epoch_end
        self.prefix = prefix
        self._benchmarks: dict[str, RetrievalBenchmark] | None = None
        self.last_results: Results | None = None

    def benchmarks(self, trainer: L.Trainer) -> dict[str, RetrievalBenchmark]:
        if self._benchmarks is None:
            factories = self.benchmark_factories
            if factories is None:
                factories = getattr(trainer.datamodule, "validation", {}) if trainer.datamodule is not None else {}
            configs = {name: spec for name, spec in factories.items() if isinstance(spec, Mapping)}
            built, self._subsets = instantiate_benchmarks(configs)
            # Factories (``_partial_`` configs) are built now; already-built benchmarks are used as they are.
            self._benchmarks = {
                name: built[name] if name in built else make() if callable(make) else make for name, make in factories.items()
            }
        return self._benchmarks

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.global_step > 0:
            self.run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_epoch_end:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every rank encodes its shard of each benchmark (see ``Evaluator``); rank zero logs."""
        if not self.benchmarks(trainer):
            return
        with full_parameters(trainer):
            self.last_results = self.evaluator.run(pl_module.encoder, self.benchmarks(trainer), self._subsets)
        if trainer.is_global_zero:
            metrics = flatten_macro(self.last_results, self.prefix)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            for run in wandb_runs(trainer.loggers):
                log_pair_tables(run, self.last_results, self.prefix)
        trainer.strategy.barrier()

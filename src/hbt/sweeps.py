"""Sweeps: failed jobs make a multirun exit non-zero; a Hydra sweep becomes a W&B sweep.

In a multirun (`python train.py -m ...`) a failing job prints its one-line error and the sweep goes on
with the other jobs; the job leaves that line in ``<job dir>/FAILED``. When the sweep ends, the Hydra
callback below (conf/hydra/default.yaml) counts those files and, if there are any, prints one line naming
how many jobs failed and the first one's error, and exits 1. Files, not memory, so it also works with
launchers that run jobs in other processes or on other hosts (joblib, SLURM) over a shared file system.

A grid is written once, in Hydra's syntax (an experiment's ``hydra.sweeper.params`` or ``key=a,b``
overrides), and runs either as a Hydra multirun or as a W&B sweep, whose agents call train.py with the
same overrides::

    python -m hbt.sweeps experiment=mbert_ratio_sweep model=mbert,xlmr_base --out sweep.yaml
    wandb sweep sweep.yaml          # prints the sweep id
    wandb agent <entity>/<project>/<sweep id>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

FAILED_FILE = "FAILED"


def job_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def clear_failure() -> None:
    (job_dir() / FAILED_FILE).unlink(missing_ok=True)


def record_failure(message: str) -> None:
    out = job_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / FAILED_FILE).write_text(" ".join(message.split()) + "\n", encoding="utf-8")


def failed_jobs(sweep_dir: str | Path) -> list[Path]:
    return sorted(Path(sweep_dir).rglob(FAILED_FILE), key=lambda p: (len(p.parts), str(p)))


class FailedJobs(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        failed = failed_jobs(sweep)
        if failed:
            jobs = len(list(sweep.rglob(".hydra")))
            first = failed[0]
            print(
                f"sweep error: {len(failed)} of {jobs} jobs failed ({', '.join(str(p.parent.relative_to(sweep)) for p in failed)}); "
                f"{first.parent}: {first.read_text(encoding='utf-8').strip()}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1)


def wandb_sweep(overrides: list[str], method: str = "grid") -> dict:
    """The W&B sweep spec of train.py under ``overrides``: every swept key (the composed config's
    ``hydra.sweeper.params``, then ``key=a,b`` overrides) a parameter with its values, every other override
    a fixed value, and the metric train.py optimizes (``optimized_metric``, else the first benchmark's
    multi/map), maximized. Agents pass the parameters as Hydra overrides (``${args_no_hyphens}``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hbt.errors import ConfigError

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(version_base="1.3", config_dir=str(Path(__file__).resolve().parents[2] / "conf")):
        cfg = compose("train", overrides=fixed, return_hydra_config=True)
    swept = {str(key): str(value) for key, value in (cfg.hydra.sweeper.params or {}).items()}
    swept.update({o.get_key_element(): o.input_line.split("=", 1)[1] for o in parsed if o.is_sweep_override()})
    if not swept:
        raise ConfigError("overrides", "nothing to sweep: give key=a,b overrides or an experiment with hydra.sweeper.params")
    parameters: dict[str, dict] = {}
    for override in (o for o in parsed if not o.is_sweep_override()):
        if override.get_key_element() not in swept:
            parameters[override.get_key_element()] = {"value": override.value()}
    for key, values in swept.items():
        (override,) = parser.parse_overrides([f"{key}={values}"])
        parameters[key] = {"values": list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]}
    benchmarks = list((cfg.get("eval") or {}).keys())
    metric = cfg.get("optimized_metric") or f"test/{benchmarks[0]}/multi/map"
    return {
        "program": "train.py",
        "method": method,
        "metric": {"name": metric, "goal": "maximize"},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
    }


def main(argv: list[str] | None = None) -> None:
    import yaml

    from hbt.errors import HbtError

    parser = argparse.ArgumentParser(prog="python -m hbt.sweeps", description="Write the W&B sweep of a Hydra sweep of train.py.")
    parser.add_argument("overrides", nargs="*", help="train.py overrides; key=a,b sweeps a key (as in a Hydra multirun)")
    parser.add_argument("--method", default="grid", choices=["grid", "random", "bayes"])
    parser.add_argument("--out", help="write the spec here (default: print it)")
    args = parser.parse_args(argv)
    try:
        spec = yaml.safe_dump(wandb_sweep(args.overrides, args.method), sort_keys=False, allow_unicode=True)
    except HbtError as error:
        print(error, file=sys.stderr)
        raise SystemExit(1) from None
    if args.out:
        Path(args.out).write_text(spec, encoding="utf-8")
    else:
        print(spec, end="")


if __name__ == "__main__":
    main()

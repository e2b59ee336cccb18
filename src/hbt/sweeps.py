"""A sweep with failed jobs exits non-zero.

In a multirun (`python train.py -m ...`) a failing job prints its one-line error and the sweep goes on
with the other jobs; the job leaves that line in ``<job dir>/FAILED``. When the sweep ends, the Hydra
callback below (conf/hydra/default.yaml) counts those files and, if there are any, prints one line naming
how many jobs failed and the first one's error, and exits 1. Files, not memory, so it also works with
launchers that run jobs in other processes or on other hosts (joblib, SLURM) over a shared file system.
"""

from __future__ import annotations

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

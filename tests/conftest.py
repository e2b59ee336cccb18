"""Tests compose the config with the same overrides a user types and call the task functions directly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import hbt  # noqa: F401  (registers ${hbt.cwd:}, which paths.root_dir resolves to)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HBT_DATA_DIR", ROOT.parent / "shared" / "data"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (`make test`: one worker per core) each worker, and every process it starts, computes
    # on one thread: two workers of two threads each on two cores would spin against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# Small, fast settings for the embedded default.
FAST = ["logger=csv", "trainer.max_epochs=1", "trainer.max_steps=6", "data.batch_size=16"]


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def make(config_name: str = "train", overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
        return compose_config(config_name, list(overrides), output_dir or tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data {path} not present")
    return path


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an entry point the way a user does (only sweeps and exit codes need a subprocess)."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


SHARED_TOOLS = Path(os.environ.get("HBT_SHARED_TOOLS", ROOT.parent / "shared" / "tools"))


@pytest.fixture(scope="session")
def me5_dir() -> Path:
    """The real multilingual-e5-small as a local HF directory, built offline once (``.cache/``, or
    ``HBT_ME5_DIR``) from ``../shared/tools/offline_me5_small.py``."""
    from filelock import FileLock

    target = Path(os.environ.get("HBT_ME5_DIR", ROOT / ".cache" / "me5-small"))
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # pytest-xdist's workers: one builds it, the others wait and use it
        if not (target / "config.json").exists():
            tool = SHARED_TOOLS / "offline_me5_small.py"
            if not tool.is_file():
                pytest.skip(f"{tool} not present")
            subprocess.run([sys.executable, str(tool), str(target)], check=True, capture_output=True)
    return target


@pytest.fixture(scope="session")
def family_dirs(me5_dir, tmp_path_factory) -> dict[str, Path]:
    """A small random-init model of each real architecture (hbt.models.families), with mE5's tokenizer."""
    from hbt.models.families import build_all

    return build_all(tmp_path_factory.mktemp("families"), me5_dir)


def without_dropout(model) -> None:
    """Dropout off everywhere: nn.Dropout modules, and the rates mBART and mT5 keep as floats."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for rate in ("dropout", "attention_dropout", "activation_dropout", "dropout_rate"):
            if isinstance(getattr(module, rate, None), float):
                setattr(module, rate, 0.0)


def check_length_groups_match_the_padded_batch(encoder, inputs, groups: int = 3):
    """The embeddings and gradients of ``inputs`` encoded in ``groups`` length groups equal those of one
    padded batch (a training-mode encoder without dropout); returns the padded batch's embeddings."""
    import torch

    results = {}
    for count in (1, groups):
        encoder.length_groups = count
        encoder.zero_grad()
        embeddings = encoder(inputs)
        (embeddings @ embeddings.T).logsumexp(1).sum().backward()
        results[count] = (embeddings.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    torch.testing.assert_close(results[groups][0], results[1][0], atol=1e-5, rtol=1e-5)
    assert results[groups][1].keys() == results[1][1].keys()
    for name, grad in results[1][1].items():
        torch.testing.assert_close(results[groups][1][name], grad, atol=1e-5, rtol=1e-4)
    return results[1][0]

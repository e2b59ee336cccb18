"""Every shipped config composes with the overrides a user would add, every _target_ imports, and every
key beside a _target_ is a parameter of it."""

import pytest
from conftest import ROOT, compose_config
from omegaconf import OmegaConf

from hbt.cli import check_targets
from hbt.errors import ConfigError

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
GROUPS = ["model", "trainer", "eval", "data", "logger"]


def targets(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for value in node.values():
            found += targets(value)
    elif isinstance(node, list):
        for value in node:
            found += targets(value)
    return found


def check(cfg) -> None:
    """Every _target_ imports, and every key beside it is a parameter of what it names (hbt.cli.check_targets,
    which train.py and evaluate.py run before building anything)."""
    check_targets(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment, tmp_path):
    extra = ["data.train.directory=/data/mmarco"] if experiment != "xquad_r_me5_small" else []
    check(compose_config("train", [f"experiment={experiment}", *extra], tmp_path))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_evaluate_takes_every_experiment(experiment, tmp_path):
    """`evaluate.py experiment=<name>` evaluates the experiment's model on its benchmarks."""
    extra = ["data.train.directory=/data/mmarco"] if experiment != "xquad_r_me5_small" else []
    cfg = compose_config("evaluate", [f"experiment={experiment}", *extra], tmp_path)
    check(cfg)
    assert cfg.eval and cfg.eval == compose_config("train", [f"experiment={experiment}", *extra], tmp_path).eval


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))])
def test_group_options_compose(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "data" and option in ("jsonl", "hf", "translated", "mmarco"):
        key = {"jsonl": "path", "hf": "name_or_path", "translated": "pattern", "mmarco": "directory"}[option]
        overrides += [f"data.train.{key}='/x/{{lang}}.jsonl'"] + (["data.train.languages=[en,de]"] if option == "translated" else [])
    check(compose_config("train", overrides, tmp_path))


def test_user_forms_from_the_brief(tmp_path):
    cfg = compose_config("train", ["model=mt5_xl", "sampler.ratio=0.3"], tmp_path)
    assert cfg.model.name_or_path == "google/mt5-xl" and cfg.sampler.ratio == 0.3
    assert cfg.optim.optimizer.lr == 3e-5  # pretrained models keep the paper's rate; only the tiny default differs
    assert compose_config("train", [], tmp_path).optim.optimizer.lr == 2e-3


def test_paper_recipe_states_the_papers_values_and_labse_inherits_it(tmp_path):
    """AdamW, lr 3e-5, weight decay 0.01, batch 100, one GPU (the paper); LaBSE differs only in the model."""
    xlmr = compose_config("train", ["experiment=paper_xlmr", "data.train.directory=/data/mmarco"], tmp_path)
    labse = compose_config("train", ["experiment=paper_labse", "data.train.directory=/data/mmarco"], tmp_path)
    assert xlmr.optim.optimizer._target_ == "torch.optim.AdamW"
    assert (xlmr.optim.optimizer.lr, xlmr.optim.optimizer.weight_decay, xlmr.data.batch_size, xlmr.trainer.devices) == (3e-5, 0.01, 100, 1)
    plain = [OmegaConf.to_container(c, resolve=False) for c in (xlmr, labse)]
    for cfg in plain:
        cfg.pop("model"), cfg.pop("hydra")
    assert plain[0] == plain[1]
    assert labse.model.name_or_path == "sentence-transformers/LaBSE" and labse.model.pooling is None
    recipe = (ROOT / "docs" / "paper_recipe.md").read_text()
    for choice in ("warmup", "clipping", "temperature", "max lengths", "training languages", "steps"):
        assert choice in recipe.lower(), choice


def test_a_key_no_constructor_takes_is_caught(tmp_path):
    """The negative control of check(): a misspelt key must fail it."""
    with pytest.raises(
        ConfigError,
        match=r"^config error: loss.temprature: not a parameter of hbt.loss.InfoNCELoss \(it takes: temperature, symmetric, mask_duplicates, margin\)",
    ):
        check(compose_config("train", ["+loss.temprature=0.1"], tmp_path))


def test_a_hydra_sweep_becomes_a_wandb_sweep_whose_every_run_composes(tmp_path, capsys):
    """One grid, two launchers: the experiment's hydra.sweeper.params and key=a,b overrides become the W&B
    sweep's parameters; each grid point, passed to train.py as the agent passes it, composes."""
    import itertools

    import yaml

    from hbt.sweeps import main

    main(["experiment=mbert_ratio_sweep", "model=mbert,xlmr_base", "--out", str(tmp_path / "sweep.yaml")])
    spec = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert spec["program"] == "train.py" and spec["command"][-1] == "${args_no_hyphens}"
    assert spec["metric"] == {"name": "test/xquad_r/multi/map", "goal": "maximize"}
    params = spec["parameters"]
    assert params["experiment"] == {"value": "mbert_ratio_sweep"}
    assert params["sampler.ratio"]["values"] == [0, 0.25, 0.5, 0.75, 1] and params["model"]["values"] == ["mbert", "xlmr_base"]
    names = {"mbert": "bert-base-multilingual-cased", "xlmr_base": "xlm-roberta-base"}
    for ratio, model in itertools.product(params["sampler.ratio"]["values"], params["model"]["values"]):
        cfg = compose_config("train", ["experiment=mbert_ratio_sweep", f"sampler.ratio={ratio}", f"model={model}"], tmp_path)
        assert cfg.model.name_or_path.endswith(names[model]) and cfg.sampler.ratio == ratio
        assert cfg.logger.wandb.group == "mbert-ratio-sweep"  # the experiment's settings apply to every run
    # Nothing swept is one line, and a non-zero exit.
    with pytest.raises(SystemExit) as stop:
        main(["model=mbert"])
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "config error: overrides: nothing to sweep: give key=a,b overrides or an experiment with hydra.sweeper.params"
    )

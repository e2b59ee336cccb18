"""The default pipeline end to end: train -> results.json -> evaluate the checkpoint and the export."""

import json

import pytest
from conftest import FAST, ROOT, run_cli

from hbt.tasks import evaluate, train

SETTINGS = {"mono", "cross", "multi"}


def check_results_shape(results: dict, dataset: str, languages: int):
    assert set(results[dataset]) == SETTINGS
    block = results[dataset]
    assert len(block["mono"]["pairs"]) == languages
    assert len(block["cross"]["pairs"]) == languages * (languages - 1)
    assert len(block["multi"]["pairs"]) == languages
    for setting in SETTINGS:
        macro = block[setting]["macro"]
        assert {"map", "recall@1", "recall@10"} <= set(macro)
        assert all(0.0 <= macro[k] <= 1.0 for k in ("map", "recall@1", "recall@10"))
    assert block["multi"]["macro"]["rank_distance"] >= 0
    assert all("-" in key for key in block["cross"]["pairs"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short default training run shared by the tests below (user-style overrides)."""
    from conftest import compose_config

    out = tmp_path_factory.mktemp("train")
    cfg = compose_config("train", [*FAST, "sampler.ratio=0.3"], out)
    metrics, objects = train(cfg)
    return out, cfg, metrics, objects


@pytest.mark.xdist_group("train_evaluate_trained")  # shares the module fixture trained: built once
@pytest.mark.slow
def test_default_training_writes_results_model_and_checkpoint(trained):
    out, cfg, metrics, objects = trained
    assert cfg.sampler.ratio == 0.3
    results = json.loads((out / "results.json").read_text())
    check_results_shape(results, "toy", languages=9)
    assert (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "model" / "config.json").is_file()
    assert objects["trainer"].global_step == 6
    assert metrics["test/toy/multi/map"] == results["toy"]["multi"]["macro"]["map"]


@pytest.mark.xdist_group("train_evaluate_trained")  # shares the module fixture trained: built once
@pytest.mark.slow
def test_the_export_has_a_hub_model_card_and_publishes(trained, monkeypatch, capsys):
    """model/README.md: metadata huggingface_hub's ModelCard parses (languages, library, tags), the recipe,
    results.json's macro values, the paper's citation; python -m hbt.publish lists it on a dry run, is one
    line without a token or offline, and uploads the export folder to the repository it names."""
    import huggingface_hub
    from huggingface_hub import ModelCard

    from hbt.publish import main as publish_main

    out, cfg, metrics, objects = trained
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.language == sorted(cfg.data.train.languages)
    assert card.data.library_name == "sentence-transformers" and "hybrid-batch-training" in card.data.tags
    assert card.data.get("base_model") is None  # the offline tiny model has no Hub name
    results = json.loads((out / "results.json").read_text())
    assert f"| toy | multi | {results['toy']['multi']['macro']['map']:.4f} |" in card.text
    assert "| hybrid batches: share of X-X (monolingual) batches, α | 0.3 |" in card.text and "arXiv:2408.10536" in card.text
    assert "| training steps | 6 |" in card.text

    assert publish_main([str(out), "someone/hbt-test", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("would upload") and "  README.md  " in listed and "  model.safetensors  " in listed
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert publish_main([str(out), "someone/hbt-test"]) == 1
    assert capsys.readouterr().err.strip() == (
        "publish error: no Hugging Face token: run `hf auth login` or set HF_TOKEN, then publish again (--dry-run needs none)"
    )
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    assert publish_main([str(out), "someone/hbt-test"]) == 1  # the tests run with HF_HUB_OFFLINE=1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("publish error: someone/hbt-test: the Hub could not be reached or refused")
    calls = []
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_repo",
        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://huggingface.co/{repo_id}",
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    assert publish_main([str(out), "someone/hbt-test", "--private"]) == 0
    assert calls[0] == ("create", "someone/hbt-test", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[1][1]["folder_path"] == str(out / "model") and calls[1][1]["repo_id"] == "someone/hbt-test"


@pytest.mark.xdist_group("train_evaluate_trained")  # shares the module fixture trained: built once
@pytest.mark.slow
def test_the_export_runs_under_mteb_with_hbts_own_scores(trained, tmp_path):
    """A trained export evaluated by MTEB (loaded with sentence-transformers, prompts mapped to MTEB's
    query / document types) on a small retrieval task defined for MTEB (the held-out toy split, English
    queries against the English pool): its nDCG@10, MAP, R@1 and R@10 are hbt's own on the same data and
    embeddings (hbt's exact fp32 ranking; MTEB rounds to 5 decimals)."""
    import mteb
    import torch
    from mteb.abstasks import AbsTaskRetrieval

    from hbt.eval.metrics import ndcg_at, per_query_metrics
    from hbt.eval.retrieval import Evaluator
    from hbt.eval.toy import toy_benchmark
    from hbt.models.encoder import Encoder
    from hbt.mteb_run import load_model, run

    out = trained[0]
    bench = toy_benchmark("test", ["en"])
    template = mteb.get_tasks(tasks=["NanoArguAnaRetrieval"])[0].metadata  # MTEB's metadata fields, offline

    class ToyEnglish(AbsTaskRetrieval):
        metadata = template.model_copy(
            update={"name": "HbtToyEnglish", "description": "hbt's toy test split", "eval_splits": ["test"], "eval_langs": ["eng-Latn"]}
        )

        def load_data(self, **kwargs):
            self.corpus = {"test": {doc(i): {"text": text} for i, text in enumerate(bench.candidates["en"])}}
            self.queries = {"test": dict(bench.queries["en"])}
            self.relevant_docs = {"test": {qid: {doc(c): 1 for c in cs} for qid, cs in bench.relevant["en"].items()}}
            self.data_loaded = True

    def doc(position: int) -> str:
        # trec_eval (MTEB's scorer) orders tied scores by document id, descending; hbt by position,
        # ascending: these ids make the two orders one (the toy pool has passages of equal text)
        return f"d{len(bench.candidates['en']) - position:05d}"

    model = load_model(str(out / "model"))
    assert set(model.prompts) == {"query", "document"}
    run(model, [ToyEnglish()], tmp_path / "mteb", prediction_folder=tmp_path / "predictions")
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "mteb").rglob("HbtToyEnglish.json")]
    theirs = result["scores"]["test"][0]
    # hbt's own metrics on MTEB's own scores (its saved predictions): the same data and embeddings
    predicted = json.loads((tmp_path / "predictions" / "HbtToyEnglish_predictions.json").read_text())["default"]["test"]
    qids = [qid for qid, _ in bench.queries["en"]]
    position = {doc(i): i for i in range(len(bench.candidates["en"]))}
    ranked = {qid: sorted(predicted[qid], key=lambda d: (-predicted[qid][d], position[d])) for qid in qids}
    ranks = torch.tensor([[ranked[qid].index(doc(c)) + 1 for c in bench.relevant["en"][qid]] for qid in qids])
    _, values = per_query_metrics(ranks, torch.ones_like(ranks, dtype=torch.bool), (1, 10), False)
    ndcg = sum(ndcg_at([1.0 if r == int(rank) else 0.0 for r in range(1, 11)], [1.0], 10) for (rank,) in ranks.tolist()) / len(qids)
    assert theirs["ndcg_at_10"] == pytest.approx(ndcg, abs=1e-5)
    assert theirs["map_at_1000"] == pytest.approx(float(values["map"].mean()), abs=1e-5)
    assert theirs["recall_at_1"] == pytest.approx(float(values["recall@1"].mean()), abs=1e-5)
    assert theirs["recall_at_10"] == pytest.approx(float(values["recall@10"].mean()), abs=1e-5)
    # hbt's evaluator, encoding itself: the tiny model's cosines lie within 0.01 of each other, so the
    # 1e-7 float differences between two batchings of the same model move a few near-tied ranks
    ours = Evaluator(precision="fp32", settings=("mono",), ks=(1, 10)).run(Encoder.from_exported(out / "model"), {"toy": bench})
    assert theirs["map_at_1000"] == pytest.approx(ours["toy"]["mono"].pairs["en-en"].metrics["map"], abs=2e-3)


def test_a_model_card_names_the_hub_model_and_dataset_it_came_from():
    from huggingface_hub import ModelCard

    from hbt.model_card import model_card

    config = {
        "model": {"name_or_path": "FacebookAI/xlm-roberta-base"},
        "data": {"train": {"_target_": "hbt.data.loaders.load_mmarco"}, "batch_size": 100},
        "sampler": {"ratio": 0.5, "mode": "batch"},
        "optim": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 3e-5, "weight_decay": 0.01}},
    }
    card = ModelCard(model_card(config, {}, ["english", "german", "japanese"], 20000))
    assert card.data.base_model == "FacebookAI/xlm-roberta-base" and card.data.datasets == ["unicamp-dl/mmarco"]
    assert card.data.language == ["de", "en", "ja"] and "No evaluation was run." in card.text
    assert "| optimizer | AdamW, lr 3e-05, weight decay 0.01 |" in card.text


@pytest.mark.xdist_group("train_evaluate_trained")  # shares the module fixture trained: built once
@pytest.mark.slow
def test_evaluate_on_the_checkpoint_reproduces_training_results(trained, make_cfg, tmp_path):
    out, *_ = trained
    cfg = make_cfg("evaluate", ["logger=csv", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"], tmp_path / "eval")
    evaluate(cfg)
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == json.loads((out / "results.json").read_text())


@pytest.mark.xdist_group("train_evaluate_trained")  # shares the module fixture trained: built once
@pytest.mark.slow
def test_evaluate_zero_shot_on_an_exported_hf_directory(trained, make_cfg, tmp_path):
    out, *_ = trained
    cfg = make_cfg("evaluate", ["logger=csv", f"model.name_or_path={out / 'model'}"], tmp_path / "hf")
    evaluate(cfg)
    results = json.loads((tmp_path / "hf" / "results.json").read_text())
    expected = json.loads((out / "results.json").read_text())
    assert results["toy"]["mono"]["macro"]["map"] == pytest.approx(expected["toy"]["mono"]["macro"]["map"], abs=1e-6)


@pytest.mark.xdist_group("train_evaluate_trained")  # shares the module fixture trained: built once
def test_existing_results_are_never_overwritten(trained, make_cfg):
    out, *_ = trained
    before = (out / "results.json").read_bytes()
    cfg = make_cfg("evaluate", ["logger=csv", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"], out)
    from hbt.errors import OutputError

    with pytest.raises(OutputError, match="results.json"):
        evaluate(cfg)
    assert (out / "results.json").read_bytes() == before


@pytest.mark.slow
# The basic launcher's two-job sweep runs in tests/test_tracking.py (the notebook and the failing-job tests).
@pytest.mark.parametrize("launcher", ["local_parallel"])
def test_multirun_two_jobs(tmp_path, launcher):
    # As a user types it, with no hydra.sweep.dir: the sweep lands under <where it started>/outputs.
    proc = run_cli(str(ROOT / "train.py"), "-m", f"hydra/launcher={launcher}", "sampler.ratio=0,1", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        check_results_shape(results, "toy", languages=9)
    assert "ratio: 0" in (sweep / "0" / "config.yaml").read_text()
    assert "ratio: 1" in (sweep / "1" / "config.yaml").read_text()


@pytest.mark.slow
def test_an_optuna_sweep_runs_end_to_end_and_records_the_optimized_metric(tmp_path):
    """Two Optuna trials over a continuous ratio, as the README types it: the sweeper reads what train.py
    returns (optimized_metric), and its optimization_results.yaml holds the best trial's value."""
    import yaml

    from hbt.results import flatten_macro, read_results

    metric = "test/toy/multi/map"
    args = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=2", "sampler.ratio=interval(0,1)"]
    proc = run_cli("train.py", *args, f"optimized_metric={metric}", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    values = {job: flatten_macro(read_results(tmp_path / job / "results.json"), "test")[metric] for job in ("0", "1")}
    ratios = {job: yaml.safe_load((tmp_path / job / "config.yaml").read_text())["sampler"]["ratio"] for job in ("0", "1")}
    assert best["name"] == "optuna" and best["best_value"] == max(values.values())
    assert best["best_params"]["sampler.ratio"] == ratios[max(values, key=values.get)]
    assert len(set(ratios.values())) == 2 and all(0 <= r <= 1 for r in ratios.values())


@pytest.mark.slow
def test_bad_config_value_is_one_line_and_nonzero(tmp_path):
    # With the W&B logger selected: the value is checked before loggers, models or the trainer start, so
    # the error is the whole output (no W&B or Lightning banners before it).
    proc = run_cli("train.py", "sampler.ratio=1.5", *FAST, "logger=wandb", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).strip().splitlines() if line.strip()]
    assert lines == ["config error: sampler.ratio: must lie in [0, 1], got 1.5"]
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_grad_cache_training_runs_through_the_trainer(make_cfg, tmp_path):
    cfg = make_cfg("train", [*FAST, "grad_cache.chunk_size=4", "trainer.max_steps=3"], tmp_path / "gc")
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 3
    assert objects["module"].automatic_optimization  # GradCache is part of the loss: Lightning steps, clips, accumulates
    check_results_shape(json.loads((tmp_path / "gc" / "results.json").read_text()), "toy", languages=9)


@pytest.mark.slow
def test_evaluate_on_two_processes_equals_one_process(tmp_path, me5_dir):
    """`evaluate.py trainer=ddp_cpu`: each rank encodes its shard of every benchmark (the MIRACL-format
    corpus streamed into fp16 shards of 7 documents, searched shard by shard, top-k merged across ranks);
    results.json equals the single-process run's."""
    from test_metrics_reference import write_miracl

    paths = write_miracl(tmp_path / "miracl")
    common = [
        "model=me5_small",
        f"model.name_or_path={me5_dir}",
        "logger=csv",
        "eval=[toy,miracl]",
        "eval.toy.languages=[en,de,ru]",
        "eval.miracl.languages=[sw]",
        *(f"eval.miracl.{key}='{value}'" for key, value in paths.items()),
        "evaluator.shard_size=7",
        "evaluator.precision=fp32",
    ]  # bf16 rounds differently in other batch compositions (each rank's shard)
    results = {}
    for name, devices in (("one", "trainer=cpu"), ("two", "trainer=ddp_cpu")):
        proc = run_cli("evaluate.py", *common, devices, f"hydra.run.dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
        output = proc.stdout + proc.stderr
        searched = [line for line in output.splitlines() if "queries searched over" in line]
        assert searched and all("over 60 documents" in line for line in searched), searched
        assert ("MEMBER: 2/2" in output) == (name == "two")  # Fabric started the second rank
    one, two = results["one"], results["two"]
    assert one.keys() == two.keys() == {"toy", "miracl"}
    for dataset in one:
        for setting, block in one[dataset].items():
            for pair, metrics in block["pairs"].items():
                for metric, value in metrics.items():
                    assert two[dataset][setting]["pairs"][pair][metric] == pytest.approx(value, abs=1e-6), (dataset, setting, pair, metric)


@pytest.mark.slow
def test_a_query_subset_from_the_command_line_is_its_own_row(make_cfg, tmp_path):
    cfg = make_cfg("train", [*FAST, "trainer.max_steps=2", "+eval.toy.query_ids.all='re:.'"], tmp_path / "run")
    train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results) == {"toy", "toy[all]"}
    assert results["toy[all]"]["multi"]["macro"] == results["toy"]["multi"]["macro"]  # every query: the same numbers


def test_optimized_metric_is_checked_before_training_and_returned(make_cfg):
    from hbt.errors import ConfigError
    from hbt.plan import plan_training
    from hbt.tasks import optimized_value

    metrics = {"test/toy/mono/map": 0.5, "test/toy/multi/map": 0.1, "test/toy/multi/recall@10": 0.2}
    assert optimized_value(make_cfg("train", []), metrics) == 0.1  # null: the first benchmark's multi/map
    assert optimized_value(make_cfg("train", ["optimized_metric=test/toy/mono/map"]), metrics) == 0.5
    assert optimized_value(make_cfg("train", ["optimized_metric=test/toy/mono/map"]), None) is None  # a failed multirun job
    assert optimized_value(make_cfg("train", []), {"test/tatoeba/xx_en/map": 0.3, "test/tatoeba/xx_en/recall@1": 0.2}) == 0.3
    with pytest.raises(ConfigError, match="optimized_metric: test/toy/cross/ndcg@10 is not among this run's metrics"):
        optimized_value(make_cfg("train", ["optimized_metric=test/toy/cross/ndcg@10"]), metrics)
    with pytest.raises(
        ConfigError, match=r"optimized_metric: expected test/<benchmark>/<setting>/<metric> with a benchmark of eval \(toy\)"
    ):
        plan_training(make_cfg("train", ["optimized_metric=test/xquad_r/multi/map"]))
    plan_training(make_cfg("train", ["optimized_metric=test/toy/multi/map"]))

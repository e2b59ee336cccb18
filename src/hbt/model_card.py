"""The Hub model card every training run writes into its export (``model/README.md``): metadata the Hub
reads (languages, base model, library, datasets, tags) and, for readers, the recipe (sampling ratio and
the rest of the training settings), the results table (every benchmark and setting of results.json, with
the metrics of the printed table), how to load the model, and the citation of the hybrid-batch paper. ``huggingface_hub``'s
``ModelCard`` parses it; ``python -m hbt.publish`` uploads the export with it.
"""

from __future__ import annotations

from pathlib import Path

from hbt.checkpointing import atomic_file
from hbt.results import Results, table_metrics

CARD_FILE = "README.md"
# mMARCO names its languages; the Hub's metadata wants ISO 639-1 codes.
LANGUAGE_CODES = {
    "english": "en", "chinese": "zh", "french": "fr", "german": "de", "indonesian": "id", "italian": "it", "portuguese": "pt",
    "russian": "ru", "spanish": "es", "arabic": "ar", "dutch": "nl", "hindi": "hi", "japanese": "ja", "vietnamese": "vi",
}  # fmt: skip
HUB_DATASETS = {"hbt.data.loaders.load_mmarco": "unicamp-dl/mmarco"}
CITATION = """@article{elmahdy2024synergistic,
  title   = {Synergistic Approach for Simultaneous Optimization of Monolingual, Cross-lingual, and Multilingual Information Retrieval},
  author  = {Elmahdy, Adel and Lin, Sheng-Chieh and Ahmad, Amin},
  journal = {arXiv preprint arXiv:2408.10536},
  year    = {2024}
}"""


def model_card(config: dict, results: Results, languages: list[str], steps: int) -> str:
    """The card's text for a run's resolved ``config``, its ``results``, training ``languages`` and ``steps``."""
    import yaml

    model = config.get("model", {})
    base = model.get("name_or_path")
    train = config.get("data", {}).get("train", {}) or {}
    codes = sorted({LANGUAGE_CODES.get(lang, lang) for lang in languages})
    metadata = {
        "language": codes,
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": [
            "sentence-transformers",
            "sentence-similarity",
            "feature-extraction",
            "multilingual",
            "retrieval",
            "hbt",
            "hybrid-batch-training",
        ],
    }
    if base and not Path(base).exists():  # a Hub name; a local directory means nothing to the Hub
        metadata["base_model"] = base
    dataset = HUB_DATASETS.get(str(train.get("_target_", "")))
    if dataset:
        metadata["datasets"] = [dataset]
    sampler, optim, trainer, loss = (config.get(key, {}) or {} for key in ("sampler", "optim", "trainer", "loss"))
    optimizer = optim.get("optimizer", {}) or {}
    recipe = [
        ("base model", base or "hbt's random-init tiny encoder (model=tiny)"),
        ("training languages", ", ".join(languages)),
        ("hybrid batches: share of X-X (monolingual) batches, α", sampler.get("ratio")),
        ("batch kind chosen per", sampler.get("mode")),
        ("language sampling temperature", sampler.get("temperature") or "none (uniform over languages)"),
        ("batch size per device", config.get("data", {}).get("batch_size")),
        ("devices", trainer.get("devices")),
        ("hard negatives per pair", config.get("data", {}).get("num_hard_negatives")),
        (
            "optimizer",
            f"{str(optimizer.get('_target_', '')).rsplit('.', 1)[-1]}, lr {optimizer.get('lr')}, weight decay {optimizer.get('weight_decay')}",
        ),
        ("loss", f"InfoNCE over cosine similarity, temperature {loss.get('temperature')}, margin {loss.get('margin', 0.0)}"),
        ("training steps", steps),
        ("precision", trainer.get("precision")),
        ("seed", config.get("seed")),
    ]
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {Path(str(base)).name if base else 'hbt tiny encoder'}, trained with hybrid batches",
        "",
        "A multilingual dense retriever fine-tuned with hbt (hybrid batch training) on parallel question-passage pairs with",
        "**hybrid batches** (Elmahdy, Lin & Ahmad 2024): each batch is monolingual (X-X: one language for the",
        "whole batch) with probability α, else cross-lingual (X-Y: query language ≠ passage language per pair),",
        "for one model that serves monolingual, cross-lingual and multilingual retrieval.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in recipe],
        "",
        "## Results",
        "",
        *results_lines(results),
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("<this repository or directory>")',
        'queries = model.encode(["..."], prompt_name="query")',
        'passages = model.encode(["..."], prompt_name="passage")',
        "scores = model.similarity(queries, passages)",
        "```",
        "",
        "The directory also loads as a Hugging Face model (`transformers.AutoModel`) and in hbt",
        "(`python evaluate.py model.name_or_path=<directory>`), with the same pooling, heads and prefixes.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def results_lines(results: Results) -> list[str]:
    """A Markdown table: one row per benchmark and setting, one column per macro metric."""
    if not results:
        return ["No evaluation was run."]
    metrics = table_metrics(results)
    lines = ["| benchmark | setting | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for dataset, by_setting in results.items():
        for setting, block in by_setting.items():
            if block.not_applicable is not None:
                lines.append(f"| {dataset} | {setting} | " + " | ".join("-" for _ in metrics) + " |")
                continue
            cells = [f"{block.macro[m]:.4f}" if m in block.macro else "-" for m in metrics]
            lines.append(f"| {dataset} | {setting}{f' ({block.corpus} corpus)' if block.corpus else ''} | " + " | ".join(cells) + " |")
    lines += ["", "mAP macro-averaged over language pairs; mono: query and pool in one language, cross: pool in another,"]
    lines += ["multi: pool of every language; rank_distance: the mean rank gap between a query's parallel relevant passages."]
    return lines


def write_model_card(directory: Path, config: dict, results: Results, languages: list[str], steps: int) -> None:
    with atomic_file(Path(directory) / CARD_FILE) as tmp:
        tmp.write_text(model_card(config, results, languages, steps), encoding="utf-8")

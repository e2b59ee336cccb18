"""Evaluate a model under MTEB, where the field reports embedding models:

    python -m hbt.mteb_run outputs/train/runs/<run>/model MIRACLRetrieval XQuADRetrieval
    python -m hbt.mteb_run <model dir> BelebeleRetrieval --document-prompt "passage: " --output-dir mteb-results

The model is loaded with sentence-transformers, as MTEB loads models: an hbt export as it is (its modules,
pooling, Dense heads and normalisation), or any sentence-transformers / Hugging Face directory or Hub name.
Its prompts are mapped onto MTEB's two prompt types: ``query`` and ``document`` (an hbt export carries
both; a directory that names its passage prompt ``passage`` has it used as ``document``;
``--query-prompt`` / ``--document-prompt`` set them for a model whose directory has none, such as an mE5
checkpoint, which hbt's config gives ``query: `` / ``passage: ``). Unknown task names, and tasks whose data
cannot be fetched (offline), are one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hbt.errors import HbtError


class MtebError(HbtError):
    def __init__(self, problem: str):
        super().__init__(f"mteb error: {problem}")


def load_model(name_or_path: str, query_prompt: str | None = None, document_prompt: str | None = None, device: str | None = None):
    """A SentenceTransformer with its prompts named as MTEB's prompt types (``query``, ``document``)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(name_or_path), device=device)
    prompts = dict(model.prompts or {})
    passage = prompts.pop("passage", None)  # hbt's and older exports' name; MTEB warns on names it lacks
    if passage is not None:
        prompts.setdefault("document", passage)
    if query_prompt is not None:
        prompts["query"] = query_prompt
    if document_prompt is not None:
        prompts["document"] = document_prompt
    model.prompts = prompts
    return model


def run(model, tasks: list, output_dir: str | Path | None = None, prediction_folder: str | Path | None = None) -> dict[str, float]:
    """MTEB's main score of each task (nDCG@10 for retrieval), its full results kept under ``output_dir``
    and, with ``prediction_folder``, each query's scored candidates."""
    import mteb
    from mteb.cache import ResultCache

    cache = ResultCache(str(output_dir)) if output_dir else None
    results = mteb.evaluate(
        model, tasks, cache=cache, co2_tracker=False, show_progress_bar=sys.stderr.isatty(), prediction_folder=prediction_folder
    )
    return {result.task_name: float(result.get_score()) for result in results.task_results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hbt.mteb_run", description="Evaluate a model (an hbt export, a directory or a Hub name) on MTEB tasks."
    )
    parser.add_argument("model", help="an hbt export (<run dir>/model), a sentence-transformers / HF directory, or a Hub name")
    parser.add_argument("tasks", nargs="+", help="MTEB task names (e.g. MIRACLRetrieval)")
    parser.add_argument("--query-prompt", default=None, help="the query prompt, where the model's directory has none")
    parser.add_argument("--document-prompt", default=None, help="the document (passage) prompt, where the model's directory has none")
    parser.add_argument("--output-dir", default=None, help="keep MTEB's result files here")
    args = parser.parse_args(argv)
    try:
        import mteb

        try:
            tasks = mteb.get_tasks(tasks=args.tasks)
        except Exception as err:  # noqa: BLE001 - mteb names the unknown task in its own error type
            raise MtebError(f"{str(err).splitlines()[0]}") from None
        model = load_model(args.model, args.query_prompt, args.document_prompt)
        try:
            scores = run(model, tasks, args.output_dir)
        except Exception as err:  # noqa: BLE001 - a task's data that cannot be fetched, offline, ...
            raise MtebError(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None
    except ImportError:
        print("mteb error: mteb is not installed (pip install -e '.[mteb]')", file=sys.stderr, flush=True)
        return 1
    except HbtError as err:
        print(str(err), file=sys.stderr, flush=True)
        return 1
    for task, score in scores.items():
        print(f"{task}: {score:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

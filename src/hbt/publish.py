"""Publish a trained model to the Hugging Face Hub: ``python -m hbt.publish <run dir> <repo id>``.

Uploads the run's export (``<run dir>/model/``: weights, tokenizer, sentence-transformers modules and the
model card the run wrote) with ``huggingface_hub`` to a model repository, created if needed (``--private``).
``--dry-run`` lists what would be uploaded and where, and touches nothing. Without a token (``hf auth
login`` or ``HF_TOKEN``), offline, or when the Hub refuses: one line saying so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hbt.errors import HbtError
from hbt.model_card import CARD_FILE


class PublishError(HbtError):
    def __init__(self, problem: str):
        super().__init__(f"publish error: {problem}")


def export_of(run_dir: Path) -> Path:
    """The run's export, with its model card; one line when it is not one."""
    model = Path(run_dir) / "model"
    if not (model / "config.json").is_file():
        raise PublishError(f"{model}: no exported model (a finished train.py run's directory holds model/)")
    if not (model / CARD_FILE).is_file():
        raise PublishError(f"{model / CARD_FILE}: no model card (runs of hbt before model cards: write one, or train again)")
    return model


def planned_files(model: Path) -> list[tuple[str, int]]:
    return [(str(p.relative_to(model)), p.stat().st_size) for p in sorted(model.rglob("*")) if p.is_file()]


def publish(run_dir: Path, repo_id: str, private: bool = False, dry_run: bool = False, out=None) -> str | None:
    """Upload the export; returns the repository's URL (None on a dry run)."""
    out = out or sys.stdout
    model = export_of(run_dir)
    files = planned_files(model)
    print(
        f"{'would upload' if dry_run else 'uploading'} {len(files)} files ({sum(s for _, s in files) / 1e6:.1f} MB) to {repo_id}:", file=out
    )
    for name, size in files:
        print(f"  {name}  {size:,} bytes", file=out)
    if dry_run:
        return None
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise PublishError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then publish again (--dry-run needs none)")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(model), repo_type="model", commit_message="Upload hbt model")
    except Exception as err:  # noqa: BLE001 - offline, a refused token, a name taken: one line with the Hub's reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PublishError(f"{repo_id}: the Hub could not be reached or refused the upload ({type(err).__name__}: {reason})") from None
    print(f"published {model} to {url}", file=out)
    return str(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hbt.publish", description="Upload a trained model (a run's model/ export) to the Hugging Face Hub."
    )
    parser.add_argument("run_dir", type=Path, help="a train.py run directory (outputs/train/runs/<timestamp>)")
    parser.add_argument("repo_id", help="<user or organisation>/<name>")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    args = parser.parse_args(argv)
    try:
        publish(args.run_dir, args.repo_id, args.private, args.dry_run)
    except HbtError as err:
        print(str(err), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fetch a benchmark or training set by name, from where it is published, into ``paths.data_dir`` in the
layout hbt reads (docs/research_questions.md, "The data, and where it goes").

    python -m hbt.fetch --list
    python -m hbt.fetch xquad-r
    python -m hbt.fetch mmarco english german --data-dir /data
    python -m hbt.fetch miracl sw te --no-corpus

- Hugging Face Hub datasets (mMARCO, MIRACL) come through ``huggingface_hub`` (its resumable downloads and
  progress bars); each file is checked against the checksum the Hub publishes (SHA-256 of LFS files, the
  git blob id of the others). Other sources (XQuAD-R, Tatoeba on GitHub; MLQA, MTOP archives) are
  downloaded over HTTP into ``<file>.part``, resumed with a range request after an interruption, and
  checked against the size the server announces (these sources publish no checksums).
- A file gets its final name only once complete and checked, so a partial download is never taken for a
  finished one; files already in place with the recorded size are skipped. ``<dataset dir>/.hbt-fetch.json``
  records what was fetched, from where, with sizes and checksums.
- Sizes are printed before anything is downloaded. Archives are unpacked into a staging directory and
  converted where hbt needs another layout (MLQA -> MLQA-R, :mod:`hbt.eval.mlqa_r`).
- Without network, or when a source cannot be reached: one line naming the dataset, what to download and
  where to put it by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from hbt.errors import HbtError
from hbt.fetch_plans import (
    MIRACL_LANGUAGES,
    MLQA_LANGUAGES,
    MMARCO_LANGUAGES,
    MTOP_LANGUAGES,
    TATOEBA_LANGUAGES,
    XQUAD_R_LANGUAGES,
    FetchError,
    Plan,
    Remote,
    plan_for,
)

RECORD = ".hbt-fetch.json"


# -- the transport: replaceable in tests, the real clients otherwise ---------------------------------------
def hub_listing(repo: str, path: str) -> list[tuple[str, int, str | None, str | None]]:
    """(path, size, LFS SHA-256, git blob id) of a file, or of every file under a folder, of a Hub dataset."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    entries = api.get_paths_info(repo, [path], repo_type="dataset")
    if entries and isinstance(entries[0], RepoFile):
        items = entries
    else:
        items = [e for e in api.list_repo_tree(repo, path_in_repo=path, repo_type="dataset", recursive=True) if isinstance(e, RepoFile)]
    return [(e.path, e.size, e.lfs.sha256 if e.lfs else None, e.blob_id) for e in items]


def hub_download(repo: str, path: str, staging: Path) -> Path:
    """Resumable (an interrupted download continues from its ``.incomplete`` file), with a progress bar."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, path, repo_type="dataset", local_dir=staging))


def url_size(url: str) -> int | None:
    with urlopen(Request(url, method="HEAD", headers={"User-Agent": "hbt-fetch"}), timeout=60) as response:
        length = response.headers.get("Content-Length")
    return int(length) if length else None


def url_download(url: str, part: Path, size: int | None, label: str) -> None:
    """Into ``part``, continuing a partial one with a range request."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"User-Agent": "hbt-fetch", **({"Range": f"bytes={have}-"} if have else {})}
    with urlopen(Request(url, headers=headers), timeout=60) as response:
        if have and response.status != 206:  # the server ignored the range: start again
            have = 0
        with open(part, "ab" if have else "wb") as out, tqdm(total=size, initial=have, unit="B", unit_scale=True, desc=label) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


# -- fetching -------------------------------------------------------------------------------------------------
def resolve(plan: Plan) -> list[Remote]:
    """Every file with its size (and checksum where the source publishes one); Hub folders expanded."""
    resolved = []
    for remote in plan.files:
        if remote.repo is None:
            resolved.append(Remote(remote.target, url=remote.url, size=url_size(remote.url)))
            continue
        listing = hub_listing(remote.repo, remote.path)
        if not listing:
            raise FetchError(plan.dataset, f"{remote.source} does not exist")
        for path, size, sha256, git_sha1 in listing:
            target = remote.target + path[len(remote.path) :].lstrip("/") if remote.target.endswith("/") else remote.target
            resolved.append(Remote(target, repo=remote.repo, path=path, size=size, sha256=sha256, git_sha1=git_sha1))
    return resolved


def fetch(dataset: str, languages: list[str], data_dir: Path, split: str = "dev", corpus: bool = True, out=None) -> Path:
    """Fetch ``dataset`` (its ``languages``, default all) into ``data_dir``; returns the dataset's directory."""
    out = out or sys.stdout
    plan = plan_for(dataset, languages, split, corpus)
    directory = Path(data_dir) / plan.directory
    staging = Path(data_dir) / ".hbt-fetch" / plan.directory
    try:
        files = resolve(plan)
    except HbtError:
        raise
    except Exception as err:  # noqa: BLE001 - no network, a proxy, a moved file: the same advice
        raise FetchError(
            dataset, f"cannot reach its source ({_reason(err)}); by hand: {plan.manual.replace('<data dir>', str(data_dir))}"
        ) from None
    record = _read_record(directory)
    known = sum(f.size or 0 for f in files)
    unknown = sum(f.size is None for f in files)
    print(
        f"{dataset}: {len(files)} file(s), {_human(known)}{f' + {unknown} of unannounced size' if unknown else ''} -> {directory}",
        file=out,
        flush=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    staged = plan.finish is not None
    for remote in files:
        final = (staging if staged else directory) / remote.target
        if (
            final.is_file()
            and record.get(remote.target, {}).get("size") == final.stat().st_size
            and (remote.size in (None, final.stat().st_size))
        ):
            print(f"  {remote.target}: already here", file=out, flush=True)
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            _get(dataset, remote, final, staging)
        except FetchError:
            raise
        except (URLError, HTTPError, OSError, ConnectionError) as err:
            by_hand = plan.manual.replace("<data dir>", str(data_dir))
            raise FetchError(dataset, f"{remote.source}: {_reason(err)}; run the command again to resume, or by hand: {by_hand}") from None
        except Exception as err:  # noqa: BLE001 - huggingface_hub's and the network stack's own error types
            raise FetchError(dataset, f"{remote.source}: {_reason(err)}; run the command again to resume") from None
        record[remote.target] = {"source": remote.source, "size": final.stat().st_size, "sha256": remote.sha256}
        _write_record(directory, record)
    if plan.finish is not None:
        plan.finish(staging, directory)
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()
    record["_complete"] = {"dataset": dataset, "languages": languages or "all", "split": split}
    _write_record(directory, record)
    for note in plan.notes:
        print(f"{dataset}: {note}", file=out)
    print(f"{dataset}: done ({directory})", file=out, flush=True)
    return directory


def _get(dataset: str, remote: Remote, final: Path, staging: Path) -> None:
    """Download one file and give it its final name only when it is complete and checked."""
    if remote.repo is not None:
        downloaded = hub_download(remote.repo, remote.path, staging / ".hub")
        _check(dataset, remote, downloaded)
        os.replace(downloaded, final)
        return
    part = final.with_name(final.name + ".part")
    url_download(remote.url, part, remote.size, remote.target)
    _check(dataset, remote, part)
    os.replace(part, final)


def _check(dataset: str, remote: Remote, path: Path) -> None:
    size = path.stat().st_size
    problem = None
    if remote.size is not None and size != remote.size:
        problem = f"{size} bytes, the source announced {remote.size}"
    elif remote.sha256 is not None and _digest(path, hashlib.sha256()) != remote.sha256:
        problem = "SHA-256 differs from the one the Hub publishes"
    elif remote.sha256 is None and remote.git_sha1 is not None:
        blob = hashlib.sha1(f"blob {size}\0".encode())  # noqa: S324 - git's blob id, not a security hash
        if _digest(path, blob) != remote.git_sha1:
            problem = "its git blob id differs from the one the Hub publishes"
    if problem:
        path.unlink()
        raise FetchError(dataset, f"{remote.target} from {remote.source} is damaged ({problem}); removed it: run the command again")


def _digest(path: Path, hasher) -> str:
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            hasher.update(chunk)
    return hasher.hexdigest()


def _read_record(directory: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((directory / RECORD).read_text())
    return {}


def _write_record(directory: Path, record: dict) -> None:
    from hbt.checkpointing import atomic_file

    with atomic_file(directory / RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return f"{type(err).__name__}: {str(reason).splitlines()[0] if str(reason) else ''}".rstrip(": ")


def _human(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def default_data_dir() -> Path:
    """``paths.data_dir``'s default: HBT_DATA_DIR, else ../shared/data beside the checkout."""
    if os.environ.get("HBT_DATA_DIR"):
        return Path(os.environ["HBT_DATA_DIR"])
    return Path.cwd() / ".." / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hbt.fetch", description="Fetch a dataset by name into the data directory, in the layout hbt reads."
    )
    parser.add_argument("dataset", nargs="?", help="xquad-r, mlqa-r, tatoeba, mtop, mmarco, miracl")
    parser.add_argument("languages", nargs="*", help="the dataset's own language names (default: all)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: HBT_DATA_DIR, else ../shared/data (paths.data_dir)")
    parser.add_argument("--split", default="dev", help="MIRACL topics/qrels and MLQA split (dev)")
    parser.add_argument("--no-corpus", action="store_true", help="MIRACL: topics and qrels only")
    parser.add_argument("--list", action="store_true", help="the datasets and their languages")
    args = parser.parse_args(argv)
    if args.list or not args.dataset:
        for name, langs in [
            ("xquad-r", XQUAD_R_LANGUAGES),
            ("mlqa-r", MLQA_LANGUAGES),
            ("tatoeba", TATOEBA_LANGUAGES),
            ("mtop", MTOP_LANGUAGES),
            ("mmarco", MMARCO_LANGUAGES),
            ("miracl", MIRACL_LANGUAGES),
        ]:
            print(f"{name:<8} {' '.join(langs)}")
        return 0
    try:
        fetch(args.dataset, args.languages, args.data_dir or default_data_dir(), args.split, not args.no_corpus)
    except HbtError as err:
        print(str(err), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"fetch {args.dataset}: interrupted; run the same command again to resume", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

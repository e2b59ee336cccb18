"""``python -m hbt.fetch``: each dataset placed where hbt reads it, from small local copies in each source's
released layout (no network). Plain-HTTP sources are served by a local server that honours range requests
(so resuming is exercised for real); Hub sources by a stand-in for the two huggingface_hub calls, over a
local directory laid out as the Hub repository is."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import shared_data

import hbt.fetch as fetch_module
import hbt.fetch_plans as plans_module
from hbt.fetch import FetchError, fetch, main


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; answers ``Range: bytes=N-`` with 206 and the rest of the file."""

    ranges: list[str] = []

    def log_message(self, *args):
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        data = path.read_bytes()
        start = 0
        requested = self.headers.get("Range")
        if requested:
            RangeHandler.ranges.append(requested)
            start = int(requested.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        return io.BytesIO(data[start:])


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over ``tmp_path / "web"`` (links to shared data inside it are followed)."""
    root = tmp_path / "web"
    root.mkdir()
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.ranges = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """``tmp_path / "hub" / <repo>``: files as the Hub repository lays them out; the listing publishes each
    file's size and SHA-256, as the Hub does for LFS files."""
    root = tmp_path / "hub"

    def listing(repo, path):
        base = root / repo
        target = base / path
        files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        return [(str(p.relative_to(base)), p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest(), None) for p in files]

    def download(repo, path, staging):
        out = Path(staging) / path
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / repo / path, out)
        return out

    monkeypatch.setattr(fetch_module, "hub_listing", listing)
    monkeypatch.setattr(fetch_module, "hub_download", download)
    return root


def test_xquad_r_is_placed_where_the_benchmark_reads_it(server, tmp_path, monkeypatch):
    from hbt.eval.lareqa import load_lareqa

    web, url = server
    (web / "xquad-r").symlink_to(shared_data("xquad-r"))
    monkeypatch.setattr(plans_module, "XQUAD_R", url + "/xquad-r/{lang}.json")
    data = tmp_path / "data"
    directory = fetch("xquad-r", ["en", "de"], data, out=open(os.devnull, "w"))
    assert sorted(p.name for p in directory.iterdir()) == [".hbt-fetch.json", "de.json", "en.json"]
    assert (directory / "en.json").read_bytes() == (shared_data("xquad-r") / "en.json").read_bytes()
    bench = load_lareqa("xquad_r", directory, ["en", "de"])
    assert set(bench.languages) == {"en", "de"} and len(bench.queries["en"]) == 1190
    record = json.loads((directory / ".hbt-fetch.json").read_text())
    assert record["en.json"]["size"] == (directory / "en.json").stat().st_size and "_complete" in record


@pytest.mark.slow
def test_an_interrupted_download_resumes_from_its_part_file_and_a_finished_one_is_skipped(server, tmp_path, monkeypatch, capsys):
    web, url = server
    (web / "xquad-r").symlink_to(shared_data("xquad-r"))
    monkeypatch.setattr(plans_module, "XQUAD_R", url + "/xquad-r/{lang}.json")
    data = tmp_path / "data"
    source = (shared_data("xquad-r") / "de.json").read_bytes()
    (data / "xquad-r").mkdir(parents=True)
    (data / "xquad-r" / "de.json.part").write_bytes(source[:100_000])  # what an interrupted run left
    fetch("xquad-r", ["de"], data)
    assert RangeHandler.ranges == ["bytes=100000-"]
    assert (data / "xquad-r" / "de.json").read_bytes() == source and not (data / "xquad-r" / "de.json.part").exists()
    fetch("xquad-r", ["de"], data)
    assert "de.json: already here" in capsys.readouterr().out and RangeHandler.ranges == ["bytes=100000-"]


@pytest.mark.slow
def test_tatoeba_pairs_are_placed_for_the_benchmark(server, tmp_path, monkeypatch):
    from hbt.eval.parallel import load_tatoeba

    web, url = server
    (web / "tatoeba").symlink_to(shared_data("tatoeba"))
    monkeypatch.setattr(plans_module, "TATOEBA", url + "/tatoeba/tatoeba.{lang}-eng.{side}")
    directory = fetch("tatoeba", ["afr", "deu"], tmp_path / "data", out=open(os.devnull, "w"))
    group = load_tatoeba(str(directory), ["afr", "deu"])
    reference = load_tatoeba(str(shared_data("tatoeba")), ["afr", "deu"])
    assert list(group.parts) == ["afr", "deu"]
    assert all(group.parts[lang].queries == reference.parts[lang].queries for lang in ("afr", "deu"))


@pytest.mark.slow
def test_mlqa_is_downloaded_unpacked_and_converted_to_mlqa_r(server, tmp_path, monkeypatch):
    from test_mlqa_r import LANGS, write_mlqa

    from hbt.eval.lareqa import load_lareqa

    web, url = server
    release = tmp_path / "release" / "MLQA_V1"
    write_mlqa(release, "dev")
    with zipfile.ZipFile(web / "MLQA_V1.zip", "w") as archive:
        for path in release.rglob("*.json"):
            archive.write(path, path.relative_to(release.parent))
    monkeypatch.setattr(plans_module, "MLQA", url + "/MLQA_V1.zip")
    monkeypatch.setattr(plans_module, "MLQA_LANGUAGES", tuple(LANGS))
    data = tmp_path / "data"
    directory = fetch("mlqa-r", ["en", "de", "ar"], data, out=open(os.devnull, "w"))
    assert sorted(p.name for p in directory.glob("*.json") if not p.name.startswith(".")) == ["ar.json", "de.json", "en.json"]
    assert not (data / ".hbt-fetch").exists()  # the archive and its staging are gone
    bench = load_lareqa("mlqa_r", directory, ["en", "de", "ar"])
    assert sum(len(q) for q in bench.queries.values()) > 0


@pytest.mark.slow
def test_mtop_is_unpacked_into_its_languages(server, tmp_path, monkeypatch):
    from test_mtop import write_mtop

    from hbt.eval.mtop import load_mtop

    web, url = server
    release = write_mtop(tmp_path / "release" / "mtop")
    with zipfile.ZipFile(web / "mtop.zip", "w") as archive:
        for path in release.rglob("*.txt"):
            archive.write(path, path.relative_to(release.parent))
    monkeypatch.setattr(plans_module, "MTOP", url + "/mtop.zip")
    directory = fetch("mtop", ["en", "de", "fr"], tmp_path / "data", out=open(os.devnull, "w"))
    assert (directory / "en" / "test.txt").is_file()
    assert load_mtop(str(directory), ["en", "de", "fr"]).languages == ["de", "en", "fr"]


@pytest.mark.slow
def test_mmarco_from_the_hub_layout_trains_with_data_mmarco(hub, tmp_path):
    from test_loaders import write_mmarco

    from hbt.data.loaders import load_mmarco

    release = tmp_path / "release"
    release.mkdir()
    write_mmarco(release, ["english", "german"])
    repo = hub / "unicamp-dl" / "mmarco" / "data"
    (repo / "google" / "queries" / "train").mkdir(parents=True)
    (repo / "google" / "collections").mkdir(parents=True)
    shutil.copyfile(release / "triples.tsv", repo / "triples.train.ids.small.tsv")
    for lang in ("english", "german"):
        shutil.copyfile(release / lang / "queries.tsv", repo / "google" / "queries" / "train" / f"{lang}_queries.train.tsv")
        shutil.copyfile(release / lang / "collection.tsv", repo / "google" / "collections" / f"{lang}_collection.tsv")
    directory = fetch("mmarco", ["english", "german"], tmp_path / "data", out=open(os.devnull, "w"))
    store = load_mmarco(str(directory), ["english", "german"])
    reference = load_mmarco(str(release), ["english", "german"], triples="triples.tsv", queries="{lang}/queries.tsv")
    assert len(store) == len(reference) > 0


@pytest.mark.slow
def test_miracl_topics_qrels_and_corpus_from_the_hub_layout(hub, tmp_path):
    from test_metrics_reference import write_miracl

    from hbt.eval.trec import load_trec

    release = tmp_path / "release"
    release.mkdir()
    write_miracl(release, "sw")
    (hub / "miracl" / "miracl").mkdir(parents=True)
    shutil.copytree(release / "miracl-v1.0-sw", hub / "miracl" / "miracl" / "miracl-v1.0-sw")
    (hub / "miracl" / "miracl-corpus").mkdir(parents=True)
    shutil.copytree(release / "miracl-corpus-v1.0-sw", hub / "miracl" / "miracl-corpus" / "miracl-corpus-v1.0-sw")
    directory = fetch("miracl", ["sw"], tmp_path / "data", out=open(os.devnull, "w"))
    conf = {  # conf/eval/miracl.yaml's paths, under the fetched directory
        "topics": str(directory / "miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv"),
        "qrels": str(directory / "miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv"),
        "corpus": str(directory / "miracl-corpus-v1.0-{lang}/docs-*.jsonl*"),
    }
    bench = load_trec("miracl", ["sw"], pooled=False, **conf)
    assert len(bench.languages["sw"].doc_ids) == 60 and bench.languages["sw"].queries


def test_a_file_that_does_not_match_the_published_checksum_is_removed_and_one_line(hub, tmp_path, monkeypatch):
    repo = hub / "unicamp-dl" / "mmarco" / "data"
    repo.mkdir(parents=True)
    (repo / "triples.train.ids.small.tsv").write_text("q1\tp1\tp2\n")
    for kind, name in (("queries/train", "english_queries.train.tsv"), ("collections", "english_collection.tsv")):
        (repo / "google" / kind).mkdir(parents=True)
        (repo / "google" / kind / name).write_text("q1\tsome text\n")
    real = fetch_module.hub_listing
    monkeypatch.setattr(fetch_module, "hub_listing", lambda r, p: [(a, b, "0" * 64, d) for a, b, _, d in real(r, p)])
    monkeypatch.setattr(plans_module, "MMARCO_LANGUAGES", ("english",))
    with pytest.raises(
        FetchError, match=r"^fetch error: mmarco: triples.train.ids.small.tsv from hf://datasets/unicamp-dl/mmarco/.* is damaged \(SHA-256"
    ):
        fetch("mmarco", [], tmp_path / "data", out=open(os.devnull, "w"))
    assert not (tmp_path / "data" / "mmarco" / "triples.train.ids.small.tsv").exists()


def test_offline_is_one_line_naming_the_dataset_and_what_to_do_by_hand(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plans_module, "XQUAD_R", "http://127.0.0.1:9/xquad-r/{lang}.json")  # nothing listens on port 9
    assert main(["xquad-r", "en", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fetch error: xquad-r: cannot reach its source (URLError")
    assert f"into {tmp_path}/xquad-r/" in err
    assert main(["xquad-r", "xx", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "fetch error: xquad-r: no language 'xx'; it has ar, de, el, en, es, hi, ru, th, tr, vi, zh"

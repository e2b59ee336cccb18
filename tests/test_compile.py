"""Compiled encoding (evaluator.compile, mine.compile): torch.compile with inductor's freezing over a copy
of the backbone gives the eager embeddings, compiles once per set of weights, compiles again when training
changes them (a frozen copy would go on with the old ones), and refuses what it cannot run with one line.
Sharded over 2 gloo ranks, compiled evaluation equals one process's: tests/test_loss_ddp.py."""

import logging

import pytest
import torch
from conftest import ROOT, compose_config, last_line, run_cli
from hydra.utils import instantiate
from test_families import cosines, family_encoder, real_texts

from hbt.errors import ConfigError
from hbt.eval.retrieval import Evaluator
from hbt.mine import Miner
from hbt.models.families import FAMILIES
from hbt.plan import plan_training


def compiles(caplog) -> int:
    return sum("compiling a" in record.getMessage() for record in caplog.records if record.name == "hbt.models.precision")


@pytest.mark.slow
def test_compiled_encoding_equals_eager_and_follows_the_weights(family_dirs, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hbt.models.precision")
    encoder = family_encoder("me5", family_dirs, tmp_path)  # the BERT architecture, pooler and all, mE5's tokenizer
    texts, _ = real_texts(3)
    eager = encoder.encode(texts, "passage", precision="bf16")
    assert cosines(encoder.encode(texts, "passage", precision="bf16", compile=True), eager).min() >= 0.9999
    again = encoder.encode(texts[:6], "passage", precision="bf16", compile=True, batch_size=2)  # other shapes
    assert cosines(again, eager[:6]).min() >= 0.9999
    assert compiles(caplog) == 1  # once for these weights: other batch shapes reuse it

    # hbt's default optimizer: the fused AdamW kernel changes the weights in place without bumping their
    # version counters, so a cache keyed by versions alone would keep the stale copy.
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=0.05, fused=True)
    encoder(encoder.text_tokenizer(texts[:4], "passage")).sum().backward()
    versions = [p._version for p in encoder.parameters()]
    optimizer.step()  # in place: the same tensors, other values
    assert [p._version for p in encoder.parameters()] == versions
    after = encoder.encode(texts, "passage", precision="bf16")
    assert cosines(after, eager).min() < 0.99  # the step moved the embeddings far enough to tell stale ones
    assert cosines(encoder.encode(texts, "passage", precision="bf16", compile=True), after).min() >= 0.9999
    assert compiles(caplog) == 2
    assert encoder.training  # encoding leaves the module's mode as it found it


@pytest.mark.slow
# BERT's architecture (pooler and all) is the test above's (me5); LaBSE is BERT's backbone too (its Dense
# head runs outside the compiled copy).
@pytest.mark.parametrize("family", [family for family in FAMILIES if family not in ("bert", "me5", "labse")])
def test_every_family_encodes_compiled_as_it_does_eagerly(family, family_dirs, tmp_path):
    """Each real architecture (pooler, Dense head, mT5's and mBART's encoders, mBART's language codes)
    through torch.compile in bf16, the default precision on this hardware, on real text in 10-11 languages."""
    encoder = family_encoder(family, family_dirs, tmp_path)
    texts, langs = real_texts(3, skip=("el",) if family == "mbart50" else ())  # mBART-50 has no Greek
    eager = encoder.encode(texts, "query", langs, precision="bf16")
    assert cosines(encoder.encode(texts, "query", langs, precision="bf16", compile=True), eager).min() >= 0.9999


def test_compile_needs_a_precision_it_can_freeze_and_says_which_key():
    with pytest.raises(ConfigError, match=r"^config error: evaluator\.compile: a compiled pass runs in fp32 or bf16 .* bf16-mixed"):
        Evaluator(precision="bf16-mixed", compile=True)
    with pytest.raises(ConfigError, match=r"^config error: evaluator\.compile: expected true or false, got 'yes'"):
        Evaluator(compile="yes")
    with pytest.raises(ConfigError, match=r"^config error: mine\.compile: .* mine\.precision=fp16 runs in fp16"):
        Miner(precision="fp16", compile=True)
    Evaluator(precision="fp32", compile=True)  # fine: fp32 and bf16 compile


def test_compile_under_fsdp_stops_before_training(make_cfg):
    for trainer in ("fsdp", "fsdp_cpu"):
        with pytest.raises(ConfigError, match=r"^config error: evaluator\.compile: not supported with trainer=fsdp"):
            plan_training(make_cfg("train", [f"trainer={trainer}", "evaluator.compile=true"]))
        plan_training(make_cfg("train", [f"trainer={trainer}"]))


def test_compile_with_a_precision_it_cannot_freeze_is_one_line_on_the_command_line(tmp_path):
    """Before the model loads (the default has none to load: its own error would come first otherwise)."""
    proc = run_cli("evaluate.py", "evaluator.compile=true", "evaluator.precision=fp16", f"hydra.run.dir={tmp_path / 'run'}", cwd=ROOT)
    assert proc.returncode != 0
    assert last_line(proc.stderr).startswith("config error: evaluator.compile: a compiled pass runs in fp32 or bf16")
    assert not (tmp_path / "run" / "results.json").exists()


def test_mining_encodes_compiled_when_asked(tmp_path):
    """mine.compile reaches the encoder's compiled path (compiling itself is the tests above's: here the
    compiled copy is the eager backbone, so the test needs no compile and still fails if mining encodes
    eagerly or in another precision)."""
    cfg = compose_config("mine", ["mine.compile=true", "mine.precision=fp32"], tmp_path)
    encoder, miner = instantiate(cfg.model), instantiate(cfg.mine)
    asked = []

    def compiled_backbone(precision):
        asked.append(precision)
        return lambda **inputs: encoder.backbone(**inputs)

    encoder.compiled_backbone = compiled_backbone
    texts = ["What currency is used in Japan?", "日本使用什么货币？", "Der Yen ist die Währung Japans."]
    mined = miner._encode(encoder, texts, "passage", None, progress=False)
    assert asked == ["fp32"]
    del encoder.compiled_backbone
    eager = encoder.encode(texts, "passage", precision="fp32").numpy()
    assert cosines(torch.from_numpy(mined), torch.from_numpy(eager)).min() >= 1 - 1e-5


def test_training_compile_setting_is_checked_before_training(make_cfg):
    assert plan_training(make_cfg("train", [])).compile is None
    assert plan_training(make_cfg("train", ["compile=true"])).compile == "default"
    assert plan_training(make_cfg("train", ["compile=reduce-overhead", "trainer=ddp_cpu"])).compile == "reduce-overhead"
    with pytest.raises(ConfigError, match=r"^config error: compile: expected true, false or one of .*; got 'fast'"):
        plan_training(make_cfg("train", ["compile=fast"]))
    with pytest.raises(ConfigError, match=r"^config error: compile: not supported with trainer=fsdp"):
        plan_training(make_cfg("train", ["compile=true", "trainer=fsdp_cpu"]))

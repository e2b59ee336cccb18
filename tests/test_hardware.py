"""The trainer follows the hardware: bf16 by default on GPUs and on CPUs with native bf16, fp32 elsewhere; large models and unsupported
FSDP combinations stop before anything loads, with one line naming the keys."""

import pytest
import torch
from conftest import ROOT, compose_config, last_line, run_cli

import hbt.hardware
from hbt.errors import ConfigError
from hbt.hardware import cpu_has_bf16, default_precision, describe_cpu, uses_gpu
from hbt.models.backbone import count_parameters
from hbt.models.encoder import Encoder
from hbt.models.precision import encode_precision
from hbt.plan import is_fsdp, plan_training
from hbt.strategies import fsdp_wrap_classes


def resolved(cfg):
    """The config a training run builds from (the run plan's resolved copy)."""
    return plan_training(cfg).config


MT5_XL = {"vocab_size": 250112, "d_model": 2048, "d_kv": 64, "d_ff": 5120, "num_layers": 24, "num_heads": 32}


def test_default_trainer_precision_follows_the_hardware(make_cfg, monkeypatch):
    cfg = make_cfg("train", [])
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.precision is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(hbt.hardware, "cpu_has_bf16", lambda native=native: native)
        cfg = make_cfg("train", [])
        cfg = resolved(cfg)
        assert cfg.trainer.precision == expected
        assert cfg.optim.optimizer.fused  # bf16 scales no gradient: the fused AdamW stays
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cfg = make_cfg("train", [])
    assert uses_gpu(cfg.trainer)
    cfg = resolved(cfg)
    assert cfg.trainer.precision == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert default_precision(True) == "16-mixed"  # V100 / T4
    cfg = make_cfg("train", ["trainer.precision=16-mixed"])
    cfg = resolved(cfg)
    assert not cfg.optim.optimizer.fused  # fp16 scales gradients; Lightning cannot clip a fused optimizer's
    cfg = make_cfg("train", ["trainer.precision=32-true"])
    cfg = resolved(cfg)
    assert cfg.trainer.precision == "32-true"  # an explicit value is kept
    assert not uses_gpu(make_cfg("train", ["trainer=cpu"]).trainer)


def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path):
    flags = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw {}\nbogomips\t: 1\n"
    for extra, native in (("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False)):
        (tmp_path / "cpuinfo").write_text(flags.format(extra))
        assert cpu_has_bf16(str(tmp_path / "cpuinfo")) is native, extra
    assert cpu_has_bf16(str(tmp_path / "missing")) is False
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Some CPU\n" + flags.format("amx_bf16 amx_tile avx512_bf16"))
    assert describe_cpu(str(tmp_path / "cpuinfo")) == "Some CPU (amx_bf16, amx_tile, avx512_bf16)"
    assert describe_cpu(str(tmp_path / "missing")) == "unknown CPU (no native bf16)"


def test_evaluation_precision_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(hbt.hardware, "cpu_has_bf16", lambda: True)
    assert encode_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(hbt.hardware, "cpu_has_bf16", lambda: False)
    assert encode_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert encode_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert encode_precision("auto", "cuda") == "fp16"
    for forced in ("fp32", "bf16", "bf16-mixed", "fp16"):
        assert encode_precision(forced, "cuda") == encode_precision(forced, "cpu") == forced
    with pytest.raises(ConfigError, match="evaluator.precision: expected auto, fp32, bf16, bf16-mixed, fp16; got 'half'"):
        encode_precision("half", "cpu")


@pytest.mark.slow
def test_the_cards_command_on_a_cpu_host_stops_with_one_line(tmp_path):
    """`python train.py model=mt5_xl sampler.ratio=0.3` here: the encoder's size is read from config.json
    on the meta device (no weights exist in this directory), and the run stops before loading anything."""
    from transformers import MT5Config

    MT5Config(**MT5_XL).save_pretrained(tmp_path / "mt5-xl")
    assert count_parameters(str(tmp_path / "mt5-xl")) == pytest.approx(1.67e9, rel=0.01)
    proc = run_cli(
        "train.py",
        "model=mt5_xl",
        f"model.name_or_path={tmp_path / 'mt5-xl'}",
        "sampler.ratio=0.3",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith("config error: trainer: ") and "1.67B encoder parameters" in proc.stderr
    assert "use trainer=gpu|ddp|fsdp (or cpu_max_parameters=null" in last_line(proc.stderr)
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_parameter_count_from_config_equals_the_loaded_encoder(family_dirs):
    for family in ("bert", "mt5", "mbart50", "labse"):
        encoder = Encoder(name_or_path=str(family_dirs[family]))
        loaded = sum(p.numel() for p in encoder.parameters()) - sum(p.numel() for p in encoder.heads.parameters())
        pooler = sum(p.numel() for module in encoder._set_aside for p in module.parameters())
        assert count_parameters(str(family_dirs[family])) == loaded + pooler, family


def test_large_model_configs_fit_an_80gb_gpu(tmp_path):
    for option, chunk in (("mt5_xl", 25), ("xlmr_xl", 10)):
        cfg = compose_config("train", [f"model={option}"], tmp_path)
        assert cfg.model.gradient_checkpointing and cfg.grad_cache.chunk_size == chunk
    for option in ("mt5_xxl", "xlmr_xxl"):
        cfg = compose_config("train", [f"model={option}"], tmp_path)
        assert cfg.model.gradient_checkpointing and cfg.grad_cache.chunk_size is None
        assert "FSDPStrategy" in cfg.trainer.strategy._target_


def test_fsdp_with_gradcache_is_refused_before_training(make_cfg):
    """(train.py's own one line for it runs in tests/test_gpu_smoke.py: fsdp/gradcache-refused.)"""
    from hbt.errors import ConfigError

    for trainer in ("fsdp", "fsdp_cpu"):
        with pytest.raises(ConfigError, match="grad_cache.chunk_size: GradCache is not supported with trainer=fsdp"):
            plan_training(make_cfg("train", [f"trainer={trainer}", "grad_cache.chunk_size=4"]))
        plan_training(make_cfg("train", [f"trainer={trainer}"]))  # without GradCache it is accepted


def test_fsdp_on_cpu_takes_full_precision_only(make_cfg):
    from hbt.errors import ConfigError

    assert is_fsdp(make_cfg("train", ["trainer=fsdp_cpu"]).trainer)
    with pytest.raises(ConfigError, match="trainer.precision: trainer=fsdp_cpu runs in full precision only"):
        plan_training(make_cfg("train", ["trainer=fsdp_cpu", "trainer.precision=bf16-mixed"]))
    plan_training(make_cfg("train", ["trainer=fsdp", "trainer.precision=bf16-mixed"]))  # on GPUs bf16 is the default


@pytest.mark.slow
def test_fsdp_wraps_each_transformer_block(family_dirs):
    names = {
        family: {cls.__name__ for cls in fsdp_wrap_classes(Encoder(name_or_path=str(family_dirs[family])))}
        for family in ("mt5", "xlmr", "mbart50")
    }
    assert "MT5Block" in names["mt5"] and "XLMRobertaLayer" in names["xlmr"] and "MBartEncoderLayer" in names["mbart50"]


@pytest.mark.slow
def test_fsdp_with_lora_keeps_original_parameters_and_wraps_the_blocks_inside_peft(family_dirs):
    """LoRA blocks mix frozen weights and trainable adapters, which FSDP's flat parameters allow only with
    use_orig_params (Lightning's default, kept by conf/trainer/fsdp.yaml); the blocks inside peft's
    wrapper are still each their own unit. (Lightning runs FSDP only on GPUs: benchmarks/gpu_smoke.py.)"""
    from omegaconf import OmegaConf

    from hbt.strategies import fsdp_strategy

    cfg = OmegaConf.load(ROOT / "conf" / "trainer" / "fsdp.yaml").strategy
    strategy = fsdp_strategy(cfg, Encoder(name_or_path=str(family_dirs["mt5"]), lora={"r": 4}))
    assert strategy.kwargs.get("use_orig_params") is True
    assert {cls.__name__ for cls in strategy.kwargs["auto_wrap_policy"]._module_classes} == {"MT5Block"}


def test_faiss_comes_from_one_extra_and_a_forced_gpu_without_one_is_one_line():
    import tomllib
    from conftest import ROOT

    from hbt.errors import ConfigError
    from hbt.eval.search import FaissSearcher

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["faiss-cpu>=1.8"] and extras["gpu"] == ["faiss-gpu>=1.15"]
    assert project["license"] == "Apache-2.0"  # the SPDX string setuptools keeps supporting (a table is deprecated)
    assert not any(dep.startswith("faiss") for dep in project["dependencies"] + extras["dev"])  # one faiss, never both
    import faiss
    import numpy as np

    if faiss.get_num_gpus() == 0:
        with pytest.raises(ConfigError, match="evaluator.searcher.use_gpu: true, but faiss sees no GPU"):
            FaissSearcher(use_gpu=True).search(np.ones((1, 4), "float32"), np.ones((3, 4), "float32"), 2)


def test_fsdp_clips_gradients_with_its_own_sharded_norm(monkeypatch):
    """Lightning's FSDP precision plugin raises on norm clipping (found on an H100: every trainer=fsdp run
    with the default gradient_clip_val stopped at step 1); the module routes it to FSDP's clip_grad_norm_.
    FSDP itself needs CUDA, so the FSDP root is a stand-in here."""
    from hbt.loss import InfoNCELoss
    from hbt.module import RetrieverModule

    calls = []

    class ShardedRoot:
        def clip_grad_norm_(self, max_norm):
            calls.append(max_norm)

    module = RetrieverModule(
        Encoder(tiny={"hidden_size": 8, "num_layers": 1, "num_heads": 2, "intermediate_size": 16}),
        InfoNCELoss(),
        optimizer=torch.optim.AdamW,
    )
    monkeypatch.setattr(module, "_fsdp_root", lambda: ShardedRoot())
    module.configure_gradient_clipping(None, 1.0, "norm")
    assert calls == [1.0]
    monkeypatch.setattr(module, "_fsdp_root", lambda: None)
    monkeypatch.setattr(module, "clip_gradients", lambda *a, **k: calls.append("lightning"))
    module.configure_gradient_clipping(None, 1.0, "norm")
    assert calls == [1.0, "lightning"]  # elsewhere Lightning clips as before


def test_bf16_mixed_clips_a_fused_optimizer_to_the_norm(monkeypatch):
    """Lightning's mixed plugin raises for a fused optimizer (fp16's concern); under bf16 the module clips it."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    from hbt.loss import InfoNCELoss
    from hbt.module import RetrieverModule

    module = RetrieverModule(
        Encoder(tiny={"hidden_size": 8, "num_layers": 1, "num_heads": 2, "intermediate_size": 16}),
        InfoNCELoss(),
        optimizer=torch.optim.AdamW,
    )
    optimizer = torch.optim.AdamW(module.parameters(), fused=True)
    for param in module.parameters():
        param.grad = torch.full_like(param, 3.0)
    with pytest.raises(RuntimeError, match="fused"):  # the plugin alone
        MixedPrecision("bf16-mixed", "cpu").clip_gradients(optimizer, 1.0)
    module._trainer = SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"), strategy=SimpleNamespace(model=None))
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in module.parameters()]))
    assert norm == pytest.approx(1.0, rel=1e-4)


def test_only_fp16_mixed_precision_gives_up_the_fused_optimizer(make_cfg):
    """Found on an H100: Lightning refuses clipping with fused AdamW under any mixed precision, so every
    default GPU run stopped at step 1. fp16 scales gradients, so it gets the foreach kernel; bf16 scales
    nothing, keeps the fused kernel (~10x faster steps on the CPU) and the module clips it directly."""
    cfg = make_cfg("train", ["trainer.precision=16-mixed"])
    cfg = resolved(cfg)
    assert cfg.optim.optimizer.fused is False
    cfg = make_cfg("train", ["trainer.precision=bf16-mixed"])
    cfg = resolved(cfg)
    assert cfg.optim.optimizer.fused is True
    cfg = make_cfg("train", ["trainer=cpu"])
    cfg = resolved(cfg)
    assert cfg.optim.optimizer.fused is True


@pytest.mark.slow
def test_bf16_mixed_training_with_clipping_runs_end_to_end(make_cfg, tmp_path):
    """The default precision on GPUs and on this CPU, with the fused AdamW and norm clipping through
    Lightning's loop: failed at step 1 before the fix. (GradCache clips through the same module hook,
    test_bf16_mixed_clips_a_fused_optimizer_to_the_norm.)"""
    from hbt.tasks import train

    cfg = make_cfg(
        "train",
        [
            "logger=csv",
            "trainer=cpu",
            "trainer.precision=bf16-mixed",
            "trainer.max_steps=3",
            "callbacks.retrieval_eval.at_epoch_end=false",
            "trainer.gradient_clip_val=1e-3",
        ],
        tmp_path / "bf16",
    )
    assert cfg.optim.optimizer.fused
    metrics, _ = train(cfg)
    assert metrics["test/toy/multi/map"] > 0


def test_the_run_plan_is_settled_once_and_edits_neither_the_config_nor_the_environment(make_cfg, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.delenv("FSDP_USE_FULL_PREC_IN_EVAL", raising=False)
    environment = dict(__import__("os").environ)
    for overrides in ([], ["trainer.precision=16-mixed", "grad_cache.chunk_size=4"], ["trainer=fsdp_cpu"]):
        cfg = make_cfg("train", overrides)
        before = OmegaConf.to_yaml(cfg)
        plan = plan_training(cfg)
        assert OmegaConf.to_yaml(cfg) == before, overrides
        assert plan.config.trainer.precision == plan.precision and plan.precision != "None"
        assert plan.config.optim.optimizer.fused == plan.fused_optimizer
    assert plan.fsdp and plan.accelerator == "cpu" and plan.grad_cache is None
    assert dict(__import__("os").environ) == environment
    plan = plan_training(make_cfg("train", ["trainer.precision=16-mixed", "grad_cache.chunk_size=4", "compile=true"]))
    assert (plan.precision, plan.fused_optimizer, plan.grad_cache_chunk, plan.compile) == ("16-mixed", False, 4, "default")

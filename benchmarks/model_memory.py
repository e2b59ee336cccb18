"""Parameters and training memory of every model config, per trainer; optionally measured on a GPU.

    python benchmarks/model_memory.py                        # the estimate table (meta device: no download, no memory)
    python benchmarks/model_memory.py --measure mt5_xl       # one training step at batch 100 on the GPU: peak memory

The architectures are built on the meta device from their published dimensions (the hub configs'
values, written out below so that nothing is fetched). The estimate, per GPU, for AdamW under
bf16-mixed (fp32 master weights, as Lightning keeps them):

    states      = 16 bytes x P        (fp32 weights 4 + gradients 4 + Adam moments 8); / N under FSDP
    bf16 copies =  2 bytes x P        (autocast's weight casts; FSDP: the largest unit, gathered)
    activations = sequences x length x layers x d x 4 bytes (checkpointed layer inputs, fp32 residual)
                  + sequences x length x (34 d + 5 heads x length) x 2 bytes (one layer recomputed,
                  Korthikanti et al. 2022), or that second term x layers without checkpointing

``sequences`` is the batch (100 queries of 64 tokens and 100 passages of 256 tokens, encoded one after
the other) or, with GradCache, one chunk. ``--measure`` runs hbt's own training step (RetrieverModule,
GradCache as configured) on random token ids at full length and prints the measured peak next to the
estimate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
GB = 1e9
BATCH, QUERY_LEN, PASSAGE_LEN = 100, 64, 256

# XLM-R's base and large shapes, which mE5 base and large share.
XLMR_BASE = dict(
    vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514
)
XLMR_LARGE = dict(
    vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514
)
# conf/model option -> (config class, published dimensions); vocabularies as the tokenizers ship them.
ARCHS = {
    "mbert": ("BertConfig", dict(vocab_size=119547, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
    "labse": ("BertConfig", dict(vocab_size=501153, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
    "me5_small": (
        "BertConfig",
        dict(vocab_size=250037, hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536),
    ),
    "me5_base": (
        "XLMRobertaConfig",
        XLMR_BASE,
    ),
    "me5_large": (
        "XLMRobertaConfig",
        XLMR_LARGE,
    ),
    "xlmr_base": (
        "XLMRobertaConfig",
        XLMR_BASE,
    ),
    "xlmr_large": (
        "XLMRobertaConfig",
        XLMR_LARGE,
    ),
    "xlmr_xl": (
        "XLMRobertaXLConfig",
        dict(
            vocab_size=250880,
            hidden_size=2560,
            num_hidden_layers=36,
            num_attention_heads=32,
            intermediate_size=10240,
            max_position_embeddings=514,
        ),
    ),
    "xlmr_xxl": (
        "XLMRobertaXLConfig",
        dict(
            vocab_size=250880,
            hidden_size=4096,
            num_hidden_layers=48,
            num_attention_heads=32,
            intermediate_size=16384,
            max_position_embeddings=514,
        ),
    ),
    "mt5_small": ("MT5Config", dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6)),
    "mt5_base": ("MT5Config", dict(vocab_size=250112, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12)),
    "mt5_large": ("MT5Config", dict(vocab_size=250112, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16)),
    "mt5_xl": ("MT5Config", dict(vocab_size=250112, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32)),
    "mt5_xxl": ("MT5Config", dict(vocab_size=250112, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)),
    "mbart_large": (
        "MBartConfig",
        dict(
            vocab_size=250054,
            d_model=1024,
            encoder_layers=12,
            decoder_layers=12,
            encoder_attention_heads=16,
            decoder_attention_heads=16,
            encoder_ffn_dim=4096,
            decoder_ffn_dim=4096,
        ),
    ),
}


def build(option: str, device: str = "meta"):
    import transformers

    from hbt.models.backbone import _encoder_class, _encoder_half

    cls_name, dims = ARCHS[option]
    config = getattr(transformers, cls_name)(**dims)
    with torch.device(device):
        cls = _encoder_class(config)
        model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    encoder = _encoder_half(model)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # hbt sets the unused pooler aside
    return encoder, config


def shape(config) -> tuple[int, int, int]:
    d = getattr(config, "hidden_size", None) or config.d_model
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "encoder_layers", None) or config.num_layers
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "encoder_attention_heads", None) or config.num_heads
    return d, layers, heads


def activations(config, sequences: int, length: int, checkpointing: bool) -> float:
    d, layers, heads = shape(config)
    one_layer = sequences * length * (34 * d + 5 * heads * length) * 2
    if not checkpointing:
        return layers * one_layer
    return sequences * length * layers * d * 4 + one_layer


def model_settings(option: str) -> tuple[bool, int | None, str]:
    """gradient_checkpointing, GradCache chunk and trainer as conf/model/<option>.yaml sets them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=[f"model={option}"])
    strategy = cfg.trainer.strategy
    trainer = "fsdp" if not isinstance(strategy, str) else "default"
    return bool(cfg.model.gradient_checkpointing), cfg.grad_cache.chunk_size, trainer


def estimate(option: str, gpus: int = 1) -> dict:
    encoder, config = build(option)
    params = sum(p.numel() for p in encoder.parameters())
    checkpointing, chunk, trainer = model_settings(option)
    shards = gpus if trainer == "fsdp" else 1
    per_gpu_batch = BATCH // gpus if trainer == "fsdp" else BATCH
    sequences = chunk or per_gpu_batch
    act = max(activations(config, sequences, PASSAGE_LEN, checkpointing), activations(config, sequences, QUERY_LEN, checkpointing))
    if not chunk:  # queries' activations are held while passages are encoded
        act = activations(config, per_gpu_batch, QUERY_LEN, checkpointing) + activations(config, per_gpu_batch, PASSAGE_LEN, checkpointing)
    states = 16 * params / shards
    copies = 2 * params / (shards if trainer == "fsdp" else 1)
    return {
        "option": option,
        "params": params,
        "trainer": trainer,
        "gpus": shards,
        "checkpointing": checkpointing,
        "chunk": chunk,
        "states_gb": states / GB,
        "activations_gb": act / GB,
        "total_gb": (states + copies + act) / GB,
    }


def table(gpus_for_fsdp: int) -> str:
    rows = [
        "| model | encoder parameters | trainer (GPUs) | grad. checkpointing | GradCache chunk | weights+grads+Adam / GPU | activations | estimated peak / GPU |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for option in ARCHS:
        e = estimate(option, gpus_for_fsdp)
        rows.append(
            f"| {option} | {e['params'] / 1e6:,.0f}M | {e['trainer']} ({e['gpus']}) | {'yes' if e['checkpointing'] else 'no'} | "
            f"{e['chunk'] or '-'} | {e['states_gb']:.1f} GB | {e['activations_gb']:.1f} GB | {e['total_gb']:.1f} GB |"
        )
    return "\n".join(rows)


def measure(option: str) -> None:
    """One optimizer step of hbt's module at batch 100, full-length inputs, bf16 autocast, on the GPU."""
    from hbt.grad_cache import GradCache
    from hbt.loss import InfoNCELoss
    from hbt.models.backbone import enable_gradient_checkpointing
    from hbt.module import RetrieverModule

    checkpointing, chunk, trainer = model_settings(option)
    torch.manual_seed(0)
    backbone, config = build(option, device="cuda")
    if checkpointing:
        enable_gradient_checkpointing(backbone)

    class Wrapped(torch.nn.Module):  # the Encoder's forward on a backbone built from dimensions alone
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, inputs):
            hidden = self.backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    encoder = Wrapped(backbone)
    module = RetrieverModule(encoder, InfoNCELoss(), optimizer=torch.optim.AdamW, grad_cache=GradCache(chunk) if chunk else None)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5, fused=True)
    vocab = config.vocab_size

    def inputs(length):
        return {
            "input_ids": torch.randint(5, vocab, (BATCH, length), device="cuda"),
            "attention_mask": torch.ones(BATCH, length, dtype=torch.long, device="cuda"),
        }

    batch = {"query": inputs(QUERY_LEN), "passage": inputs(PASSAGE_LEN)}
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if chunk:
                loss = module.batch_loss(batch)[0]
                loss.backward()
            else:
                loss, _ = module.contrastive_loss(encoder(batch["query"]), encoder(batch["passage"]), None)
                loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / GB
    est = estimate(option)
    print(
        f"{option}: {est['params'] / 1e9:.2f}B parameters, checkpointing={checkpointing}, chunk={chunk}: measured peak {peak:.1f} GB "
        f"(estimate {est['total_gb']:.1f} GB) on {torch.cuda.get_device_name()}, step {min(times):.2f} s at batch {BATCH}, loss {loss.item():.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fsdp-gpus", type=int, default=8, help="GPUs the sharded (fsdp) models are estimated on")
    parser.add_argument("--measure", nargs="*", default=None, help="model options to measure on the GPU")
    args = parser.parse_args()
    if args.measure:
        for option in args.measure:
            try:
                measure(option)
            except torch.OutOfMemoryError:
                print(
                    f"{option}: out of memory at batch {BATCH} on {torch.cuda.get_device_name()} (estimate {estimate(option)['total_gb']:.1f} GB)"
                )
            import gc

            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return
    print(table(args.fsdp_gpus))


if __name__ == "__main__":
    main()

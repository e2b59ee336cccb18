"""LoRA (model.lora): only the adapters train, in every family; the merged export embeds like the module."""

import pytest
import torch

from hbt.errors import ConfigError
from hbt.loss import InfoNCELoss
from hbt.models.encoder import Encoder
from hbt.models.families import FAMILIES

TEXTS = [
    "Wo liegt Berlin?",
    "Berlin liegt in Deutschland.",
    "¿Dónde está Madrid?",
    "Madrid está en España.",
    "Где Москва?",
    "Москва в России.",
]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_only_adapters_change_and_the_merged_export_embeds_like_the_module(family, family_dirs, tmp_path):
    torch.manual_seed(0)
    encoder = Encoder(
        name_or_path=str(family_dirs[family]), lora=LORA, gradient_checkpointing=True, max_passage_length=32, max_query_length=32
    )
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable), sorted(trainable)[:5]
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = InfoNCELoss()
    tt = encoder.text_tokenizer
    langs = ["de", "de", "es", "es", "ru", "ru"]
    for _ in range(3):
        q = encoder(tt(TEXTS[0::2], "query", langs[0::2]))
        p = encoder(tt(TEXTS[1::2], "passage", langs[1::2]))
        loss, _ = loss_fn(q, p, torch.arange(len(q)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable  # the base weights (and any Dense head) are untouched
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    encoder.eval()
    trained = encoder.encode(TEXTS, "passage", langs)
    encoder.save_pretrained(tmp_path / "export")
    assert not any("lora_" in n for n, _ in encoder.named_parameters())  # merged into the weights
    assert torch.allclose(encoder.encode(TEXTS, "passage", langs), trained, atol=1e-5)
    reloaded = Encoder.from_exported(tmp_path / "export")
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    assert torch.allclose(reloaded.encode(TEXTS, "passage", langs), trained, atol=1e-5)


def test_bad_lora_settings_name_the_key():
    tiny = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
    with pytest.raises(ConfigError, match="model.lora.rank"):
        Encoder(tiny=tiny, lora={"rank": 4})
    with pytest.raises(ConfigError, match="model.lora.r: must be >= 1"):
        Encoder(tiny=tiny, lora={"r": 0})
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        Encoder(tiny=tiny, lora={"r": 4, "target_modules": ["no_such_module"]})


@pytest.mark.slow
@pytest.mark.parametrize("family", ["xlmr"])  # mt5 and the others: the unit test above, checkpointing on
def test_lora_trains_under_ddp_with_grad_cache_and_checkpointing(family, family_dirs, tmp_path):
    """3 steps under trainer=ddp_cpu with GradCache chunks and gradient checkpointing on; the export is a
    plain model that evaluate.py's task loads."""
    import json

    from conftest import run_cli

    common = [f"model={FAMILIES[family]}", "logger=csv", "eval.toy.languages=[en,de]"]
    train = run_cli(
        "train.py",
        *common,
        f"model.name_or_path={family_dirs[family]}",
        "model.lora={r: 4, alpha: 8}",
        "model.gradient_checkpointing=true",
        "grad_cache.chunk_size=2",
        "trainer=ddp_cpu",
        "trainer.max_steps=3",
        "data.batch_size=4",
        "data.train.languages=[en,de]",
        "callbacks.retrieval_eval.at_epoch_end=false",
        f"hydra.run.dir={tmp_path / 'train'}",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    state = torch.load(tmp_path / "train" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 3 and any("lora_A" in k for k in state["state_dict"])
    from safetensors import safe_open

    with safe_open(str(next((tmp_path / "train" / "model").glob("*.safetensors"))), "pt") as f:
        assert not any("lora" in k for k in f.keys())  # merged
    from conftest import compose_config

    from hbt.tasks import evaluate

    # evaluate.py's task in this process (its command line runs in test_train_evaluate.py): one Python start less.
    evaluate(compose_config("evaluate", [*common, f"model.name_or_path={tmp_path / 'train' / 'model'}"], tmp_path / "eval"))
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["toy"]["multi"]["macro"]

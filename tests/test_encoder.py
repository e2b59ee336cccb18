"""One encoder wrapper for every family; exports that sentence-transformers loads to the same embeddings."""

import pytest
import torch
from transformers import ByT5Tokenizer, MBartConfig, MBartModel, MT5Config, MT5Model, XLMRobertaConfig, XLMRobertaModel

from hbt.errors import ConfigError
from hbt.models.encoder import Encoder

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
TEXTS = ["What currency is used in Japan?", "日本使用什么货币？", "Какая валюта в Японии?"]


def save_random(model, path):
    model.save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "family,build,backbone",
    [
        (
            "xlmr",
            lambda: XLMRobertaModel(
                XLMRobertaConfig(vocab_size=384, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
            ),
            "XLMRobertaModel",
        ),
        (
            "mt5",
            lambda: MT5Model(MT5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, decoder_start_token_id=0)),
            "MT5EncoderModel",
        ),
        (
            "mbart",
            lambda: MBartModel(
                MBartConfig(
                    vocab_size=384,
                    d_model=32,
                    encoder_layers=1,
                    decoder_layers=1,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=64,
                    decoder_ffn_dim=64,
                )
            ),
            "MBartEncoder",
        ),
    ],
)
def test_model_families_load_their_encoder_half(tmp_path, family, build, backbone):
    encoder = Encoder(name_or_path=save_random(build(), tmp_path / family))
    assert type(encoder.backbone).__name__ == backbone
    emb = encoder.encode(TEXTS, "query")
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_cls_and_mean_pooling():
    encoder = Encoder(tiny=TINY, pooling="cls")
    hidden = torch.arange(12.0).reshape(1, 3, 4)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(encoder.pool(hidden, mask), hidden[:, 0])
    encoder.pooling = "mean"
    assert torch.equal(encoder.pool(hidden, mask), hidden[:, :2].mean(1))


def test_prefixes_and_lengths_are_applied():
    encoder = Encoder(tiny=TINY, query_prefix="q> ", passage_prefix="p> ", max_query_length=8)
    ids = encoder.text_tokenizer.encode(["hello world"], "query")[0]
    assert len(ids) == 8
    assert encoder.tokenizer.decode(encoder.text_tokenizer.encode(["hi"], "passage")[0], skip_special_tokens=True) == "p> hi"


def test_export_loads_in_sentence_transformers_with_the_same_embeddings(tmp_path):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    encoder = Encoder(tiny=TINY)
    encoder.save_pretrained(tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    for kind in ("query", "passage"):
        ours = encoder.encode(TEXTS, kind)
        theirs = st.encode(TEXTS, prompt_name=kind, convert_to_tensor=True)
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    reloaded = Encoder.from_exported(tmp_path / "model")
    torch.testing.assert_close(reloaded.encode(TEXTS, "query"), encoder.encode(TEXTS, "query"))


def test_pad_right_pads_lists_and_cached_arrays_alike():
    """The batch-at-once padding against the row-by-row definition, for the token cache's int32 arrays
    and for lists, with an empty row, one row and no rows."""
    import numpy as np

    encoder = Encoder(tiny=TINY).eval()
    tt = encoder.text_tokenizer
    pad_id = tt.tokenizer.pad_token_id
    rows = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13], [14, 15]]
    width = 5
    expected_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
    expected_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    for given in (rows, [np.asarray(row, dtype=np.int32) for row in rows]):
        out = tt.pad(given)
        assert out["input_ids"].dtype == out["attention_mask"].dtype == torch.long
        assert torch.equal(out["input_ids"], expected_ids) and torch.equal(out["attention_mask"], expected_mask)
    assert tt.pad([[3, 4]])["input_ids"].tolist() == [[3, 4]]
    assert tt.pad([])["input_ids"].shape == (0, 0) and tt.pad([[]])["input_ids"].shape == (1, 0)
    # the padding is masked out: a padded row embeds as it does alone
    with torch.no_grad():
        assert torch.allclose(encoder(tt.pad([[5, 6, 7], [8, 9, 10, 11, 12]]))[0], encoder(tt.pad([[5, 6, 7]]))[0], atol=1e-5)


def test_unknown_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.name_or_path: cannot load"):
        Encoder(name_or_path=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="model.pooling"):
        Encoder(tiny=TINY, pooling="weighted")


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        encoder = Encoder(tiny=TINY, gradient_checkpointing=checkpointing)
        for module in encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        encoder(encoder.text_tokenizer(TEXTS, "query")).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.slow
def test_tokenizer_fingerprint_follows_everything_that_decides_the_token_ids(family_dirs):
    """The token cache is keyed by this digest: equal for the same tokenizer loaded twice, different when
    the vocabulary, a prefix, a length or the language codes differ."""
    from dataclasses import replace

    from hbt.models.languages import LanguageCodes

    base = Encoder(name_or_path=str(family_dirs["xlmr"])).text_tokenizer
    assert Encoder(name_or_path=str(family_dirs["xlmr"])).text_tokenizer.fingerprint() == base.fingerprint()
    mbart = Encoder(name_or_path=str(family_dirs["mbart50"])).text_tokenizer  # same pieces, language codes added
    others = [
        replace(base, query_prefix="query: "),
        replace(base, max_passage_length=17),
        mbart,
        replace(mbart, languages=LanguageCodes(mbart.languages.available, {"el": "en_XX"})),
        Encoder(tiny=TINY).text_tokenizer,
    ]
    digests = [base.fingerprint(), *(t.fingerprint() for t in others)]
    assert len(set(digests)) == len(digests)
    # Nor what the last call left in the tokenizer: the language code it tagged with (mBART-50 keeps it in
    # its rules; encode sets it each call) or the truncation length transformers sets on the backend.
    for lang in ("de", "zh", "en"):
        mbart.encode(["a text"], "query" if lang == "zh" else "passage", lang)
        assert mbart.fingerprint() == digests[3], lang
    base.encode(["a text"], "query")
    assert base.fingerprint() == digests[0]

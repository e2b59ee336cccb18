"""Small random-init models of each real encoder family, built offline from their config classes.

The tests and the GPU smoke check run every family hbt supports through the same path a user's
pretrained checkpoint takes (load, train under DDP, export, reload, evaluate), without a download:
each is the real architecture (BERT with its pooler, XLM-R, a sentence-transformers LaBSE-style
directory with its Dense head, the mT5 and mBART-50 encoders), a few layers wide, saved with a real
multilingual tokenizer: the 250k-piece XLM-R sentencepiece vocabulary of a local multilingual-E5
directory (``../shared/tools/offline_me5_small.py`` builds one). mBART-50's tokenizer is that same
vocabulary with mBART-50's 52 language codes and ``<mask>`` appended, which is how the real one is laid
out (``de_DE`` = 250003, ``en_XX`` = 250004, ``<mask>`` = 250053).

    python -m hbt.models.families OUT_DIR --tokenizer <multilingual-E5 dir> [--hidden 32 --layers 2]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

# family -> the conf/model option whose settings (pooling, prefixes, language codes) it is run with
FAMILIES = {"bert": "mbert", "xlmr": "xlmr_base", "labse": "labse", "me5": "me5_small", "mt5": "mt5_small", "mbart50": "mbart_large"}


def xlmr_tokenizer(source: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def mbart50_tokenizer(source: str | Path):
    """mBART-50's tokenizer over the XLM-R vocabulary of ``source`` (same pieces, codes appended)."""
    from transformers import MBart50Tokenizer
    from transformers.models.mbart50.tokenization_mbart50 import FAIRSEQ_LANGUAGE_CODES

    spec = json.loads((Path(source) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = [tuple(piece) for piece in spec["model"]["vocab"]]
    if vocab[-1][0] == "<mask>":
        vocab = vocab[:-1]
    vocab += [(code, 0.0) for code in FAIRSEQ_LANGUAGE_CODES] + [("<mask>", 0.0)]
    return MBart50Tokenizer(vocab=vocab, src_lang="en_XX")


def _sizes(hidden: int, layers: int) -> dict:
    return {"hidden": hidden, "layers": layers, "heads": max(1, hidden // 16), "ffn": hidden * 4}


def build(
    family: str,
    out: str | Path,
    tokenizer_source: str | Path,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    tokenizers: dict | None = None,
) -> Path:
    """Write one family's random-init model and tokenizer to ``out``; returns ``out``. ``tokenizers``: the
    tokenizers already built from ``tokenizer_source`` (keyed mbart50 / xlmr), reused and added to."""
    from transformers import (
        BertConfig,
        BertModel,
        MBartConfig,
        MBartModel,
        MT5Config,
        MT5Model,
        T5Config,
        T5Model,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    out = Path(out)
    torch.manual_seed(seed)
    s = _sizes(hidden, layers)
    kind = "mbart50" if family == "mbart50" else "xlmr"
    tokenizers = {} if tokenizers is None else tokenizers
    if kind not in tokenizers:  # loading the 250k-piece tokenizer is most of a small family's build
        tokenizers[kind] = mbart50_tokenizer(tokenizer_source) if kind == "mbart50" else xlmr_tokenizer(tokenizer_source)
    tok = tokenizers[kind]
    vocab, pad = len(tok), tok.pad_token_id
    bert_like = {
        "vocab_size": vocab,
        "hidden_size": s["hidden"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "intermediate_size": s["ffn"],
        "pad_token_id": pad,
    }
    t5_like = {
        "vocab_size": vocab,
        "d_model": s["hidden"],
        "d_kv": max(8, s["hidden"] // s["heads"]),
        "d_ff": s["ffn"],
        "num_layers": s["layers"],
        "num_heads": s["heads"],
        "pad_token_id": pad,
        "decoder_start_token_id": pad,
    }
    makers: dict[str, Callable[[], torch.nn.Module]] = {
        "bert": lambda: BertModel(BertConfig(**bert_like), add_pooling_layer=True),
        "me5": lambda: BertModel(BertConfig(**bert_like), add_pooling_layer=True),
        "labse": lambda: BertModel(BertConfig(**bert_like), add_pooling_layer=True),
        "xlmr": lambda: XLMRobertaModel(XLMRobertaConfig(**bert_like, max_position_embeddings=514), add_pooling_layer=True),
        # T5 itself (model_type "t5"): the architecture of larger encoder-decoders such as UL2 (20B).
        "t5": lambda: T5Model(T5Config(**t5_like, feed_forward_proj="gated-silu")),
        "mt5": lambda: MT5Model(MT5Config(**t5_like)),
        "mbart50": lambda: MBartModel(
            MBartConfig(
                vocab_size=vocab,
                d_model=s["hidden"],
                encoder_layers=s["layers"],
                decoder_layers=1,
                encoder_attention_heads=s["heads"],
                decoder_attention_heads=s["heads"],
                encoder_ffn_dim=s["ffn"],
                decoder_ffn_dim=s["ffn"],
                pad_token_id=pad,
                max_position_embeddings=1024,
            )
        ),
    }
    if family not in makers:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(makers)}")
    model = makers[family]()
    if family != "labse":
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return out
    # LaBSE as sentence-transformers publishes it: CLS pooling -> Dense(h, h, tanh) -> Normalize.
    from sentence_transformers import SentenceTransformer, models

    raw = out.with_name(out.name + ".backbone")
    model.save_pretrained(raw)
    tok.save_pretrained(raw)
    modules = [
        models.Transformer(str(raw)),
        models.Pooling(s["hidden"], "cls"),
        models.Dense(s["hidden"], s["hidden"], activation_function=torch.nn.Tanh()),
        models.Normalize(),
    ]
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def build_all(root: str | Path, tokenizer_source: str | Path, families=tuple(FAMILIES), **sizes) -> dict[str, Path]:
    root, tokenizers = Path(root), {}
    return {family: build(family, root / family, tokenizer_source, tokenizers=tokenizers, **sizes) for family in families}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument(
        "--tokenizer", required=True, help="a directory with an XLM-R style tokenizer.json (e.g. the offline multilingual-E5)"
    )
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"any of {', '.join(FAMILIES)}, t5")
    args = parser.parse_args()
    for family, path in build_all(args.out, args.tokenizer, args.families.split(","), hidden=args.hidden, layers=args.layers).items():
        print(f"{family}: {path} (run with model={FAMILIES.get(family, 'mt5_xxl')} model.name_or_path={path})")


if __name__ == "__main__":
    main()

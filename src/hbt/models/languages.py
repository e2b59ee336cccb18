"""Language codes for tokenizers that tag every text with its language (mBART-50, and any tokenizer
with a ``src_lang`` and a ``lang_code_to_id`` table, such as NLLB or M2M-100).

hbt's data and benchmarks name languages by ISO 639-1 (``de``), for Tatoeba by ISO 639-3 (``deu``) and
for mMARCO by English name (``german``).
mBART-50 names them ``de_DE``, ``en_XX``, ``zh_CN``. A code is found by the part before ``_``; the
3-letter names are first mapped to their 2-letter form. ``model.language_codes`` overrides any of
them, and a language with no code is a config error, never a silent fallback to English.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hbt.errors import ConfigError

# ISO 639-3 (as in XTREME's Tatoeba files) -> ISO 639-1, for the languages language-coded tokenizers know.
ISO3_TO_ISO1 = {
    "afr": "af",
    "ara": "ar",
    "arb": "ar",
    "aze": "az",
    "ben": "bn",
    "bul": "bg",
    "ces": "cs",
    "cmn": "zh",
    "zho": "zh",
    "deu": "de",
    "ell": "el",
    "eng": "en",
    "est": "et",
    "eus": "eu",
    "fas": "fa",
    "pes": "fa",
    "fin": "fi",
    "fra": "fr",
    "glg": "gl",
    "guj": "gu",
    "heb": "he",
    "hin": "hi",
    "hrv": "hr",
    "hun": "hu",
    "ind": "id",
    "ita": "it",
    "jav": "jv",
    "jpn": "ja",
    "kat": "ka",
    "kaz": "kk",
    "khm": "km",
    "kor": "ko",
    "lit": "lt",
    "lav": "lv",
    "lvs": "lv",
    "mal": "ml",
    "mar": "mr",
    "mkd": "mk",
    "khk": "mn",
    "mon": "mn",
    "mya": "my",
    "npi": "ne",
    "nep": "ne",
    "nld": "nl",
    "pol": "pl",
    "por": "pt",
    "pus": "ps",
    "ron": "ro",
    "rus": "ru",
    "sin": "si",
    "slv": "sl",
    "spa": "es",
    "swe": "sv",
    "swh": "sw",
    "swa": "sw",
    "tam": "ta",
    "tel": "te",
    "tgl": "tl",
    "tha": "th",
    "tur": "tr",
    "ukr": "uk",
    "urd": "ur",
    "vie": "vi",
    "xho": "xh",
}

# mMARCO names its languages by their English names (its directories): the same ISO 639-1 codes.
NAME_TO_ISO1 = {
    "arabic": "ar",
    "chinese": "zh",
    "dutch": "nl",
    "english": "en",
    "french": "fr",
    "german": "de",
    "hindi": "hi",
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "portuguese": "pt",
    "russian": "ru",
    "spanish": "es",
    "vietnamese": "vi",
}


def tokenizer_language_codes(tokenizer) -> list[str] | None:
    """The language codes a tokenizer tags texts with, or None when it does not tag languages."""
    table = getattr(tokenizer, "lang_code_to_id", None)
    if not table or not hasattr(tokenizer, "src_lang"):
        return None
    return sorted(table)


class LanguageCodes:
    """Maps hbt language names to a tokenizer's codes: ``overrides`` first, then by ISO prefix."""

    def __init__(self, available: Iterable[str], overrides: Mapping[str, str] | None = None):
        self.available = sorted(available)
        self.overrides = dict(overrides or {})
        by_prefix: dict[str, str] = {}
        for code in self.available:
            by_prefix.setdefault(code.split("_")[0].lower(), code)
        self.by_prefix = by_prefix
        for lang, code in self.overrides.items():
            if code not in self.available:
                raise ConfigError(
                    f"model.language_codes.{lang}", f"{code!r} is not a code of this tokenizer; it has {', '.join(self.available)}"
                )

    def __call__(self, lang: str | None) -> str:
        if lang is None:
            raise ConfigError("model.language_codes", "this tokenizer tags each text with its language, but no language was given")
        if lang in self.overrides:
            return self.overrides[lang]
        if lang in self.available:
            return lang
        key = ISO3_TO_ISO1.get(lang.lower()) or NAME_TO_ISO1.get(lang.lower(), lang.lower())
        if key in self.by_prefix:
            return self.by_prefix[key]
        raise ConfigError(
            f"model.language_codes.{lang}",
            f"the tokenizer has no code for language {lang!r}; map it with +model.language_codes.{lang}=<code> "
            f"(one of {', '.join(self.available)})",
        )

    def check(self, languages: Iterable[str]) -> None:
        """Resolve every language up front, so a missing code stops before any work starts."""
        for lang in languages:
            self(lang)

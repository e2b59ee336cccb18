"""A built-in multilingual parallel QA corpus, generated at run time from Unicode CLDR names.

Babel ships CLDR's translated names of territories, currencies and languages. Each item asks one fact
about one territory (its currency, or its official language) in every language, with a passage that
states it. Templates are ours; names come from CLDR, so nothing is downloaded and no text is copied.
Splits are by territory, so train, validation and test share neither items nor territory names.
"""

from __future__ import annotations

import hashlib

from babel import Locale
from babel.languages import get_official_languages
from babel.numbers import get_territory_currencies

from hbt.data.schema import ParallelItem
from hbt.errors import ConfigError

# {T} territory, {C} currency, {L} language. Quote-style constructions avoid case inflection.
TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "currency_q": "What currency is used in {T}?",
        "currency_p": "{T} uses the {C} as its currency.",
        "language_q": "Which language is spoken in {T}?",
        "language_p": "The official language of {T} is {L}.",
    },
    "de": {
        "currency_q": "Welche Währung wird im Land {T} verwendet?",
        "currency_p": "Im Land {T} bezahlt man mit der Währung {C}.",
        "language_q": "Welche Sprache spricht man im Land {T}?",
        "language_p": "Die Amtssprache im Land {T} ist {L}.",
    },
    "es": {
        "currency_q": "¿Qué moneda se usa en {T}?",
        "currency_p": "La moneda oficial de {T}: {C}.",
        "language_q": "¿Qué idioma se habla en {T}?",
        "language_p": "El idioma oficial de {T} es el {L}.",
    },
    "fr": {
        "currency_q": "Quelle monnaie utilise-t-on dans le pays {T} ?",
        "currency_p": "La monnaie officielle du pays {T} : {C}.",
        "language_q": "Quelle langue parle-t-on dans le pays {T} ?",
        "language_p": "La langue officielle du pays {T} est le {L}.",
    },
    "ru": {
        "currency_q": "Какая валюта используется в стране «{T}»?",
        "currency_p": "Официальная валюта страны «{T}» — {C}.",
        "language_q": "На каком языке говорят в стране «{T}»?",
        "language_p": "Официальный язык страны «{T}» — {L}.",
    },
    "ar": {
        "currency_q": "ما هي العملة المستخدمة في {T}؟",
        "currency_p": "العملة الرسمية في {T} هي {C}.",
        "language_q": "ما هي اللغة المتحدث بها في {T}؟",
        "language_p": "اللغة الرسمية في {T} هي {L}.",
    },
    "zh": {
        "currency_q": "{T}使用什么货币？",
        "currency_p": "{T}的法定货币是{C}。",
        "language_q": "{T}说什么语言？",
        "language_p": "{T}的官方语言是{L}。",
    },
    "hi": {
        "currency_q": "{T} में कौन सी मुद्रा चलती है?",
        "currency_p": "{T} की आधिकारिक मुद्रा {C} है।",
        "language_q": "{T} में कौन सी भाषा बोली जाती है?",
        "language_p": "{T} की आधिकारिक भाषा {L} है।",
    },
    "el": {
        "currency_q": "Ποιο νόμισμα χρησιμοποιείται στη χώρα {T};",
        "currency_p": "Το επίσημο νόμισμα της χώρας {T} είναι {C}.",
        "language_q": "Ποια γλώσσα μιλιέται στη χώρα {T};",
        "language_p": "Η επίσημη γλώσσα της χώρας {T} είναι {L}.",
    },
}
SPLITS = ("train", "validation", "test")


def _territories() -> list[str]:
    """Two-letter CLDR territory codes of real places (no macro-regions, no private-use codes)."""
    names = Locale.parse("en").territories
    return sorted(c for c in names if len(c) == 2 and c.isalpha() and c not in {"ZZ", "EU", "EZ", "UN", "QO", "XA", "XB"})


def _split_of(territory: str, seed: int, fractions: tuple[float, float]) -> str:
    """Stable split assignment from a hash, so adding a language never moves an item."""
    digest = hashlib.sha256(f"{seed}:{territory}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"


def toy_items(
    split: str,
    languages: list[str],
    seed: int = 0,
    fractions: tuple[float, float] = (0.7, 0.1),
) -> list[ParallelItem]:
    """Items of one split. An item is kept only if CLDR names all of its slots in every language."""
    if split not in SPLITS:
        raise ConfigError("data.split", f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    unknown = [lang for lang in languages if lang not in TEMPLATES]
    if unknown:
        raise ConfigError("data.languages", f"no built-in templates for {unknown}; available: {sorted(TEMPLATES)}")
    locales = {lang: Locale.parse(lang) for lang in languages}
    items: list[ParallelItem] = []
    for territory in _territories():
        if _split_of(territory, seed, fractions) != split:
            continue
        currencies = get_territory_currencies(territory)
        official = get_official_languages(territory)
        facts = {"currency": ("C", currencies[0] if currencies else None), "language": ("L", official[0] if official else None)}
        for kind, (slot, code) in facts.items():
            if code is None:
                continue
            questions, passages = {}, {}
            for lang, loc in locales.items():
                names = {"T": loc.territories.get(territory), slot: (loc.currencies if slot == "C" else loc.languages).get(code)}
                if not all(names.values()) or names[slot] == code:
                    break
                questions[lang] = TEMPLATES[lang][f"{kind}_q"].format(**names)
                passages[lang] = TEMPLATES[lang][f"{kind}_p"].format(**names)
            else:
                items.append(ParallelItem(id=f"{territory}-{kind}", questions=questions, passages=passages))
    return items

"""One schema for parallel training data.

An item is one question-passage pair available in several languages (translations of each other).
Languages may be missing for some items; hard negatives are optional, per language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ParallelItem:
    id: str
    questions: dict[str, str]
    passages: dict[str, str]
    hard_negatives: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def languages(self) -> tuple[str, ...]:
        """Languages in which both the question and the passage exist, in sorted order."""
        return tuple(sorted(set(self.questions) & set(self.passages)))


def languages_of(items: list[ParallelItem]) -> list[str]:
    """All languages that occur in ``items``, sorted."""
    return sorted({lang for item in items for lang in item.languages})


class TextTokenizer(Protocol):
    """What the data layer uses of an encoder's tokenizer (:class:`hbt.models.tokenizer.TextTokenizer`,
    from the layer above): token ids of texts, padding, the language check and the fingerprint that keys
    the token cache."""

    def __call__(self, texts: list[str], kind: str, lang=None) -> dict: ...

    def encode(self, texts: list[str], kind: str, lang=None) -> list[list[int]]: ...

    def pad(self, ids) -> dict: ...

    def check_languages(self, languages) -> None: ...

    def fingerprint(self) -> str: ...

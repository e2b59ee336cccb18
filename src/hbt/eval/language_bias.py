"""Language bias of a ranking over a pool that mixes languages (the multi setting), per query.

**PEER@k**, "Probability of Equal Expected Rank" (Yang, Jänich, Mayfield & Lawrie, SIGIR 2024). For each
relevance level r of the query's judgements, the documents of that level are grouped by language: a
retrieved one (in the top k) contributes its rank, an unretrieved *relevant* one the tied rank
``(2N + U + 1) / 2`` after all N documents of the level (U of them unretrieved). The Kruskal-Wallis test
over the language groups (empty groups dropped) gives ``p_r``: the probability of the ranks if every
language had the same expected rank (``p_r = 1`` with fewer than two non-empty groups, or when nothing
of the level was retrieved). ``PEER@k = sum_r w_r p_r`` with weights that sum to 1. This is the
authors' reference implementation (the ``peer-measure`` package, on ``ir_measures``) to the letter, its
details included: ranks are the positions in the ranking, not re-ranked within a level; unretrieved
non-relevant documents count for nothing; a level exists when the query has a judgement of that level.
A pool is judged in full: every candidate that is not relevant is a judged non-relevant (level 0).
CI checks equality with the reference to 1e-9 per query (tests/test_language_bias.py).

**Language preference** at k: ``own_share@k``, the share of the top k in the query's own language,
beside ``own_relevant_share`` (that language's share of the query's relevant candidates) and
``own_pool_share`` (its share of the pool): a ranking without preference puts as much of the query's
language in its top k as the relevant set warrants. ``last_language:<Y>``: the share of queries (with
two or more relevant candidates) whose relevant candidate ranked last, the end of the rank distance, is
in language Y. docs/evaluation.md gives the formulas and how to read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hbt.errors import ConfigError

DEFAULT_WEIGHTS = {0: 0.5, 1: 0.5}


def kruskal_p(samples: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The reference's Kruskal-Wallis statistic H over language groups of ranks (NaN: unretrieved), and its
    degrees of freedom; ``(nan, 0)`` where the reference answers p = 1 without a test, and where every
    value is the same, which the reference divides 0 by 0 for (NaN), and hbt takes as p = 1: no
    difference between the languages to test (the one departure, docs/evaluation.md)."""
    flat = [v for group in samples for v in group]
    if all(np.isnan(v) for v in flat):  # nothing retrieved (or nothing at all)
        return float("nan"), 0
    total = len(flat)
    unretrieved = [sum(1 for v in group if np.isnan(v)) for group in samples]
    tied = (2 * total + sum(unretrieved) + 1) / 2
    groups = [np.asarray([v for v in group if not np.isnan(v)] + [tied] * u, dtype=float) for group, u in zip(samples, unretrieved)]
    groups = [g for g in groups if len(g)]
    if len(groups) < 2:
        return float("nan"), 0
    n = np.asarray([len(g) for g in groups])
    everything = np.concatenate(groups)
    mean = everything.mean()
    between = np.square(np.asarray([g.sum() for g in groups]) / n - mean) @ n
    within = np.square(everything - mean).sum()
    if within == 0:  # every rank the same (one retrieved at the tied rank): the reference's 0/0, NaN; here p = 1
        return float("nan"), 0
    return float((n.sum(dtype=float) - 1) * between / within), len(groups) - 1


def p_values(tests: list[tuple[float, int]]) -> np.ndarray:
    """chi2 survival of each (H, df); 1.0 where no test was made (df 0)."""
    from scipy.stats import chi2

    h = np.asarray([t[0] for t in tests], dtype=float)
    df = np.asarray([t[1] for t in tests])
    out = np.ones(len(tests))
    tested = df > 0
    if tested.any():
        out[tested] = chi2.sf(h[tested], df[tested])
    return out


def check_bias(ks, weights) -> tuple[tuple[int, ...], dict[int, float]]:
    """``evaluator.bias_ks`` and ``evaluator.peer_weights`` checked: positive integer cut-offs; weights by
    non-negative integer relevance level, each >= 0, summing to 1 (as the reference requires)."""
    try:
        ks = list(ks) if ks is not None else []
    except TypeError:  # a single number where a list belongs
        raise ConfigError("evaluator.bias_ks", f"expected a non-empty list of integers >= 1, got {ks!r}") from None
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError("evaluator.bias_ks", f"expected a non-empty list of integers >= 1, got {ks!r}")
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError("evaluator.peer_weights", f"expected a mapping {{relevance level: weight}}, got {weights!r}")
    levels = {}
    for level, weight in weights.items():
        try:
            key = int(level)
        except (TypeError, ValueError):
            key = -1
        if key < 0 or str(key) != str(level).strip():
            raise ConfigError("evaluator.peer_weights", f"relevance levels are integers >= 0, got {level!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError("evaluator.peer_weights", f"weights are numbers >= 0, got {weight!r} for level {level}")
        levels[key] = float(weight)
    if not np.isclose(sum(levels.values()), 1.0):
        raise ConfigError("evaluator.peer_weights", f"the weights must sum to 1, they sum to {sum(levels.values()):g}")
    return tuple(sorted(set(ks))), levels


@dataclass(frozen=True)
class LanguageBias:
    """PEER@k and the language preference at each of ``ks`` (``weights``: PEER's by relevance level)."""

    ks: tuple[int, ...] = (10,)
    weights: Mapping[int, float] = None  # type: ignore[assignment]

    def __post_init__(self):
        ks, weights = check_bias(self.ks, DEFAULT_WEIGHTS if self.weights is None else self.weights)
        object.__setattr__(self, "ks", ks)
        object.__setattr__(self, "weights", weights)

    @property
    def depth(self) -> int:
        return max(self.ks)

    def per_query(
        self,
        top: torch.Tensor,
        whole: torch.Tensor,
        valid: torch.Tensor,
        lang_of: torch.Tensor,
        pool_of: torch.Tensor,
        own: int,
        languages: Sequence[str],
        pool_sizes: Sequence[int],
    ) -> tuple[dict[str, np.ndarray], list[str | None]]:
        """Each query's values, and the language of its last-ranked relevant candidate (None with fewer
        than two relevant candidates).

        ``top``: [queries, K] the columns of each query's K best candidates, in rank order (K >= max k, or
        the whole ranking); ``whole``: [queries, R] the rank of each relevant candidate in the ranking,
        ``valid`` its mask, ``lang_of`` its language (index into ``languages``); ``pool_of``: each
        column's language; ``own``: the query language's index; ``pool_sizes``: the candidates each
        language puts in the ranking (the query itself excluded for parallel text)."""
        queries = whole.shape[0]
        top_lang = pool_of[top].numpy() if top.numel() else np.zeros((queries, 0), dtype=np.int64)
        ranks, valid_np, langs_np = whole.numpy(), valid.numpy(), lang_of.numpy()
        ranked = int(sum(pool_sizes))
        values: dict[str, np.ndarray] = {f"peer@{k}": np.empty(queries) for k in self.ks}
        values.update({f"own_share@{k}": np.empty(queries) for k in self.ks})
        relevant_count = valid_np.sum(1)
        values["own_relevant_share"] = ((langs_np == own) & valid_np).sum(1) / np.maximum(relevant_count, 1)
        values["own_pool_share"] = np.full(queries, pool_sizes[own] / max(ranked, 1)) if own >= 0 else np.zeros(queries)
        last: list[str | None] = []
        tests: dict[int, list[list[tuple[float, int]]]] = {k: [] for k in self.ks}
        for q in range(queries):
            rel = [(int(r), int(lang)) for r, lang, ok in zip(ranks[q], langs_np[q], valid_np[q]) if ok]
            relevant_at = {r for r, _ in rel}
            last.append(languages[max(rel)[1]] if len(rel) >= 2 else None)
            non_relevant_judged = ranked > len(rel)  # the level-0 judgements exist
            for k in self.ks:
                cut = min(k, ranked)
                values[f"own_share@{k}"][q] = float((top_lang[q, :cut] == own).sum()) / cut if cut else 0.0
                levels = {1: [[] for _ in languages]}
                for r, lang in rel:
                    levels[1][lang].append(float(r) if r <= k else float("nan"))
                if non_relevant_judged:
                    levels[0] = [[] for _ in languages]
                    for position, lang in enumerate(top_lang[q, :cut].tolist(), 1):
                        if position not in relevant_at:
                            levels[0][lang].append(float(position))
                tests[k].append([(level, kruskal_p(groups)) for level, groups in levels.items()])
        for k in self.ks:
            flat = [test for query in tests[k] for _, test in query]
            p = iter(p_values(flat))
            values[f"peer@{k}"][:] = [sum(self.weights.get(level, 0.0) * next(p) for level, _ in query) for query in tests[k]]
        return values, last


def last_language_shares(last: Sequence[str | None], languages: Sequence[str]) -> dict[str, float]:
    """``last_language:<Y>``: the share of the queries with a last-ranked relevant candidate whose last one
    is in Y ({} when no query has two relevant candidates)."""
    named = [lang for lang in last if lang is not None]
    if not named:
        return {}
    return {f"last_language:{y}": sum(1 for lang in named if lang == y) / len(named) for y in languages}

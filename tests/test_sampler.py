"""Hybrid batch sampler: faithful batch types, DDP consistency, determinism and resume."""

import itertools

import numpy as np
import pytest

from hbt.errors import ConfigError
from hbt.sampling import HybridBatchSampler

LANGS = ["ar", "de", "en", "hi", "zh"]


def full_items(n: int, langs=LANGS):
    return [list(langs)] * n


def is_mono(batch) -> bool:
    kinds = {ref.monolingual for ref in batch}
    assert len(kinds) == 1, "batch mixes X-X and X-Y pairs"
    return kinds.pop()


def test_ratio_share_and_batch_purity_over_2000_batches():
    sampler = HybridBatchSampler(full_items(20_000), batch_size=10, ratio=0.3, seed=7)
    batches = list(itertools.islice(iter(sampler), 2000))
    assert len(batches) == 2000
    mono = [is_mono(b) for b in batches]
    assert abs(np.mean(mono) - 0.3) <= 0.03
    for batch, m in zip(batches, mono):
        assert len({ref.item for ref in batch}) == len(batch), "duplicate item id in a batch"
        if m:
            assert len({ref.query_lang for ref in batch}) == 1
        else:
            assert all(ref.query_lang != ref.passage_lang for ref in batch)


@pytest.mark.parametrize("ratio,expected", [(1.0, True), (0.0, False)])
def test_pure_settings(ratio, expected):
    sampler = HybridBatchSampler(full_items(500), batch_size=8, ratio=ratio)
    assert all(is_mono(b) == expected for b in sampler)


def test_mono_languages_uniform_and_cross_pairs_cover_all_ordered_pairs():
    sampler = HybridBatchSampler(full_items(50_000), batch_size=5, ratio=0.5, seed=1)
    mono_langs, cross_pairs = [], set()
    for batch in sampler:
        if is_mono(batch):
            mono_langs.append(batch[0].query_lang)
        else:
            cross_pairs.update((r.query_lang, r.passage_lang) for r in batch)
    counts = np.array([mono_langs.count(lang) for lang in LANGS]) / len(mono_langs)
    assert np.all(np.abs(counts - 0.2) < 0.03)
    assert cross_pairs == {(a, b) for a in LANGS for b in LANGS if a != b}


def test_missing_languages_are_respected():
    items = [["en", "de"], ["en"], ["de", "zh"], ["en", "de", "zh"]] * 50
    sampler = HybridBatchSampler(items, batch_size=4, ratio=0.5, seed=3)
    for batch in sampler:
        for ref in batch:
            assert ref.query_lang in items[ref.item] and ref.passage_lang in items[ref.item]


def test_example_mode_mixes_types_inside_batches():
    sampler = HybridBatchSampler(full_items(20_000), batch_size=50, ratio=0.3, mode="example", seed=2)
    refs = [ref for batch in sampler for ref in batch]
    share = np.mean([ref.monolingual for ref in refs])
    assert abs(share - 0.3) < 0.02
    assert any(len({r.monolingual for r in b}) == 2 for b in sampler)


def test_two_ranks_agree_on_type_and_split_items():
    items = full_items(400)
    ranks = [HybridBatchSampler(items, batch_size=10, ratio=0.5, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = []
    for b0, b1 in zip(*ranks):
        assert is_mono(b0) == is_mono(b1)
        if is_mono(b0):
            assert b0[0].query_lang == b1[0].query_lang
        ids0, ids1 = {r.item for r in b0}, {r.item for r in b1}
        assert not ids0 & ids1
        seen += [*ids0, *ids1]
    assert sorted(seen) == list(range(400))  # the union covers the epoch


def test_deterministic_per_epoch_and_different_across_epochs():
    a = HybridBatchSampler(full_items(300), batch_size=10, seed=4)
    b = HybridBatchSampler(full_items(300), batch_size=10, seed=4)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_resume_from_state_dict_gives_the_same_batches():
    reference = HybridBatchSampler(full_items(500), batch_size=10, seed=9)
    reference.set_epoch(2)
    expected = list(reference)
    interrupted = HybridBatchSampler(full_items(500), batch_size=10, seed=9)
    interrupted.set_epoch(2)
    stream = iter(interrupted)
    head = [next(stream) for _ in range(17)]
    state = interrupted.state_dict()
    resumed = HybridBatchSampler(full_items(500), batch_size=10, seed=0)
    resumed.load_state_dict(state)
    assert head + list(resumed) == expected


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"ratio": 1.5}, "sampler.ratio"),
        ({"ratio": -0.1}, "sampler.ratio"),
        ({"mode": "mixed"}, "sampler.mode"),
        ({"language_weights": {"xx": 1.0}}, "sampler.language_weights"),
    ],
)
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        HybridBatchSampler(full_items(100), batch_size=4, **kwargs)


def test_cross_batches_need_two_languages():
    with pytest.raises(ConfigError, match="at least 2 languages"):
        HybridBatchSampler([["en"]] * 100, batch_size=4, ratio=0.5)
    HybridBatchSampler([["en"]] * 100, batch_size=4, ratio=1.0)  # pure X-X is fine


def test_language_with_too_few_items_fails_before_training():
    items = [["en", "de"]] * 100 + [["en", "de", "sw"]] * 3
    with pytest.raises(ConfigError, match="'sw' has 3 items"):
        HybridBatchSampler(items, batch_size=8, ratio=0.5)


def test_ratio_schedule_moves_the_share_of_mono_batches():
    sampler = HybridBatchSampler(full_items(20_000), batch_size=4, ratio=0.5, ratio_schedule=[[0, 1.0], [1, 0.0]], seed=0)
    batches = list(sampler)
    first, last = batches[: len(batches) // 10], batches[-len(batches) // 10 :]
    assert np.mean([is_mono(b) for b in first]) > 0.85
    assert np.mean([is_mono(b) for b in last]) < 0.15
    sampler.set_epoch(3)  # past the last point: held at 0
    assert not any(is_mono(b) for b in itertools.islice(iter(sampler), 200))


def test_epochs_use_all_the_data_when_it_is_not_fully_parallel():
    """An X-X draw in a language that has run out falls back to another draw instead of ending the epoch;
    len() (what the learning-rate schedule is sized by) is the number of batches the epoch yields."""
    langs = [("en", "de", "ar") if i < 30 else ("en", "de") if i < 60 else ("en",) for i in range(100)]
    for ratio in (0.0, 0.5, 1.0):
        sampler = HybridBatchSampler(langs, batch_size=8, ratio=ratio, seed=1)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler), (ratio, epoch)
            used = [ref.item for batch in batches for ref in batch]
            assert len(used) == len(set(used))
            if ratio > 0:  # every item has English, so X-X batches can take all but the last < 8 items
                assert len(used) > 100 - 8, (ratio, epoch, len(used))
            else:  # X-Y only: the 60 items with 2+ languages
                assert len(used) > 60 - 8, (ratio, epoch, len(used))


def test_values_needing_no_data_are_checked_alone_with_one_line_each():
    from hbt.errors import ConfigError
    from hbt.sampling import check_settings

    check_settings(0.5, "batch", 16, [[0, 1.0], [1, 0.0]])
    for args, message in [
        ((1.5,), "sampler.ratio: must lie in [0, 1], got 1.5"),
        (("abc",), "sampler.ratio: must lie in [0, 1], got abc"),
        ((0.5, "pairs"), "sampler.mode: unknown mode 'pairs'"),
        ((0.5, "batch", 0), "data.batch_size: must be an integer >= 1, got 0"),
        ((0.5, "batch", 4, [[0, 2.0]]), "sampler.ratio_schedule: expected [[epoch, ratio], ...] with ratios in [0, 1], got [0, 2.0]"),
        ((0.5, "batch", 4, [[0]]), "sampler.ratio_schedule: expected"),
    ]:
        with pytest.raises(ConfigError) as err:
            check_settings(*args)
        assert str(err.value).startswith("config error: " + message), str(err.value)


# -- sampling temperature ------------------------------------------------------------------------------
# Unbalanced: every item in English, 40% also in German, 5% also in Swahili.
UNBALANCED = [["en", "de", "sw"] if i % 20 == 0 else ["en", "de"] if i % 5 < 2 else ["en"] for i in range(20_000)]
CRITICAL = {1: 10.83, 2: 13.82}  # chi-square at p = 0.001 by degrees of freedom


def chi_square(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("temperature", [1.0, 2.0, 1 / 0.3, float("inf")])
def test_x_x_languages_follow_the_tempered_shares(temperature):
    """q_l ∝ n_l^(1/T): the X-X batch languages of the first 600 batches (before any language runs short)
    fit it by a chi-square test; T = 1 is proportional, T = inf uniform."""
    sampler = HybridBatchSampler(UNBALANCED, batch_size=4, ratio=1.0, seed=11, temperature=temperature)
    counts = np.array([20_000, 8_000, 1_000], dtype=float)  # en, de, sw
    expected_shares = counts ** (1 / temperature) / (counts ** (1 / temperature)).sum()
    order = [sampler.languages.index(lang) for lang in ("en", "de", "sw")]
    np.testing.assert_allclose(sampler.language_probs[order], expected_shares)
    drawn = [batch[0].query_lang for batch in itertools.islice(iter(sampler), 600)]
    observed = np.array([drawn.count(lang) for lang in ("en", "de", "sw")], dtype=float)
    assert chi_square(observed, expected_shares * len(drawn)) < CRITICAL[2], (observed, expected_shares)


def test_temperature_composes_with_language_weights():
    sampler = HybridBatchSampler(UNBALANCED, batch_size=4, ratio=1.0, temperature=1.0, language_weights={"en": 0.0, "de": 1.0, "sw": 1.0})
    probs = dict(zip(sampler.languages, sampler.language_probs))
    assert probs["en"] == 0 and probs["de"] == pytest.approx(8 / 9) and probs["sw"] == pytest.approx(1 / 9)


@pytest.mark.parametrize("temperature", [1.0, float("inf")])
def test_x_y_pairs_draw_languages_by_the_tempered_pair_weights(temperature):
    """Per X-Y pair, the query language is drawn among the item's languages with weight q_l / n_l: given the
    items the epoch drew, the expected count of each query language is exact, and the draw fits it."""
    sampler = HybridBatchSampler(UNBALANCED, batch_size=8, ratio=0.0, seed=5, temperature=temperature)
    pairs = [ref for batch in sampler for ref in batch]
    index = {lang: i for i, lang in enumerate(sampler.languages)}
    expected = np.zeros(len(index))
    for ref in pairs:
        weights = sampler.pair_weights[[index[lang] for lang in sampler.item_languages[ref.item]]]
        for lang, w in zip(sampler.item_languages[ref.item], weights / weights.sum()):
            expected[index[lang]] += w
    observed = np.array([sum(ref.query_lang == lang for ref in pairs) for lang in sampler.languages], dtype=float)
    assert chi_square(observed, expected) < CRITICAL[2], (observed, expected)
    assert all(ref.query_lang != ref.passage_lang for ref in pairs)
    sw = observed[index["sw"]] / observed.sum()
    # Swahili is in 1,000 of the 8,000 items with two languages: a third of their queries at T = 1 (4%), 85%
    # at T = inf (11%): up-weighted as far as the items allow (each item is used once per epoch)
    assert (0.09 < sw < 0.12) if temperature == float("inf") else (0.03 < sw < 0.055), sw


def test_temperature_keeps_ranks_in_step_and_resume_exact():
    items = UNBALANCED[:4000]
    kwargs = {"batch_size": 4, "ratio": 0.5, "seed": 3, "temperature": 2.0}
    rank0 = list(HybridBatchSampler(items, rank=0, world_size=2, **kwargs))
    rank1 = list(HybridBatchSampler(items, rank=1, world_size=2, **kwargs))
    whole = list(HybridBatchSampler(items, batch_size=8, ratio=0.5, seed=3, temperature=2.0))
    assert [a + b for a, b in zip(rank0, rank1)] == whole
    interrupted = HybridBatchSampler(items, **kwargs)
    stream = iter(interrupted)
    head = [next(stream) for _ in range(50)]
    resumed = HybridBatchSampler(items, **kwargs)
    resumed.load_state_dict(interrupted.state_dict())
    assert head + list(resumed) == list(HybridBatchSampler(items, **kwargs))


@pytest.mark.parametrize("temperature", [0, -1.0, "hot", True])
def test_a_temperature_that_is_not_positive_is_one_line(temperature):
    from hbt.sampling import check_settings

    with pytest.raises(ConfigError, match=r"^config error: sampler.temperature: must be > 0"):
        check_settings(0.5, "batch", 4, None, temperature)


class ReferencePool:
    """The pool's definition, computed the slow way: the first n unused qualifying items in shuffled order,
    none used when fewer are left."""

    def __init__(self, order):
        self.order = [int(i) for i in order]
        self.used: set[int] = set()

    def take(self, n, kind, qualifies):
        picked = [item for item in self.order if qualifies[item] and item not in self.used][:n]
        if len(picked) < n:
            return None
        self.used.update(picked)
        return picked


@pytest.mark.parametrize("ratio,mode", [(0.0, "batch"), (0.5, "batch"), (1.0, "batch"), (0.5, "example")])
def test_the_pool_draws_what_its_definition_says(monkeypatch, ratio, mode):
    """The linear-time pool (one cursor per kind of draw) gives the epochs its slow definition gives, on
    unbalanced data where languages run out and draws fall back."""
    import hbt.sampling

    items = UNBALANCED[:1500]
    fast = list(HybridBatchSampler(items, batch_size=8, ratio=ratio, mode=mode, seed=2).global_batches(1))
    monkeypatch.setattr(hbt.sampling, "_Pool", ReferencePool)
    assert fast == list(HybridBatchSampler(items, batch_size=8, ratio=ratio, mode=mode, seed=2).global_batches(1))
    assert len(fast) > 50

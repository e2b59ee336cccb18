"""Values computed by hand: InfoNCE and its symmetric form on a few 2-d unit vectors, the learning-rate
schedule step by step, and GradCache's RNG replay with dropout on (with the negative control that fails
when the replay is taken out)."""

import math

import pytest
import torch

from hbt.errors import ConfigError
from hbt.loss import InfoNCELoss
from hbt.module import warmup_linear


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Two queries and three candidates on the unit circle: cosines are cos(angle difference).
QUERIES = [unit(0), unit(90)]
PASSAGES = [unit(30), unit(120), unit(200)]  # query 0's positive, query 1's positive, a hard negative
T = 0.5


def cross_entropy(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def cosine(a: list[float], b: list[float]) -> float:
    return a[0] * b[0] + a[1] * b[1]


def by_hand_forward(masked: tuple[int, int] | None = None) -> float:
    total = 0.0
    for i, q in enumerate(QUERIES):
        logits = [cosine(q, p) / T for p in PASSAGES]
        if masked is not None and masked[0] == i:
            logits.pop(masked[1])  # a masked candidate is left out of the softmax
        total += cross_entropy(logits, i)
    return total / len(QUERIES)


def tensors():
    return torch.tensor(QUERIES, dtype=torch.float64), torch.tensor(PASSAGES, dtype=torch.float64), torch.tensor([0, 1])


def test_infonce_equals_the_formula_by_hand():
    q, p, targets = tensors()
    loss, stats = InfoNCELoss(temperature=T)(q, p, targets)
    # Query 0: cosines 0.8660, -0.5, -0.9397 -> logits 1.7321, -1, -1.8794 -> -1.7321 + ln(6.1726) = 0.0881.
    # Query 1: cosines 0.5, 0.8660, -0.3420 -> logits 1, 1.7321, -0.6840 -> -1.7321 + ln(8.8749) = 0.4512.
    assert by_hand_forward() == pytest.approx((0.0881 + 0.4512) / 2, abs=1e-4)
    assert loss.item() == pytest.approx(by_hand_forward(), abs=1e-12)
    assert stats["accuracy"].item() == 1.0
    assert stats["pos_sim"].item() == pytest.approx((cosine(QUERIES[0], PASSAGES[0]) + cosine(QUERIES[1], PASSAGES[1])) / 2, abs=1e-12)


def test_symmetric_infonce_averages_both_directions_by_hand():
    q, p, targets = tensors()
    loss, _ = InfoNCELoss(temperature=T, symmetric=True)(q, p, targets)
    # Backward direction: each positive retrieves its own query among the queries.
    back = sum(cross_entropy([cosine(PASSAGES[i], query) / T for query in QUERIES], i) for i in range(2)) / 2
    assert loss.item() == pytest.approx((by_hand_forward() + back) / 2, abs=1e-12)
    assert back != pytest.approx(by_hand_forward(), abs=1e-3)  # the two directions differ: the average is no copy of one


def test_masking_and_targets_change_the_loss_as_the_formula_says():
    """Negative controls: the loss must move when a candidate is masked or the targets are wrong."""
    q, p, targets = tensors()
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[0, 2] = True
    masked, _ = InfoNCELoss(temperature=T)(q, p, targets, mask=mask)
    assert masked.item() == pytest.approx(by_hand_forward(masked=(0, 2)), abs=1e-12)
    assert masked.item() < InfoNCELoss(temperature=T)(q, p, targets)[0].item()
    wrong, _ = InfoNCELoss(temperature=T)(q, p, torch.tensor([1, 0]))
    assert wrong.item() > 2.0 > by_hand_forward()


def test_additive_margin_is_subtracted_from_each_positive_in_both_directions_by_hand():
    """LaBSE's additive-margin softmax (loss.margin), temperature 1, margin 0.3. Cosines: q0.p0 = 1,
    q0.p1 = 0.6, q1.p0 = 0, q1.p1 = 0.8. Forward rows [0.7, 0.6] (target 0) and [0, 0.5] (target 1):
    (ln(1 + e^-0.1) + ln(1 + e^0.5) - 0.5) / 2 = 0.5592368. Backward (positives retrieve queries) rows
    [0.7, 0] and [0.6, 0.5]: (ln(1 + e^-0.7) + ln(1 + e^0.1)) / 2 = 0.5737914."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    targets = torch.tensor([0, 1])
    loss, _ = InfoNCELoss(temperature=1.0, margin=0.3)(q, p, targets)
    assert loss.item() == pytest.approx(0.5592368221, abs=1e-9)
    symmetric, _ = InfoNCELoss(temperature=1.0, margin=0.3, symmetric=True)(q, p, targets)
    assert symmetric.item() == pytest.approx((0.5592368221 + 0.5737913545) / 2, abs=1e-9)
    plain, _ = InfoNCELoss(temperature=1.0)(q, p, targets)
    assert plain.item() < loss.item()  # the margin makes every positive harder
    # A margin that would flip query 0's ranking (1 - 0.5 < 0.6) leaves the statistics on the plain cosines.
    _, stats = InfoNCELoss(temperature=1.0, margin=0.5)(q, p, targets)
    assert stats["accuracy"].item() == 1.0 and stats["pos_sim"].item() == pytest.approx(0.9)


@pytest.mark.parametrize("margin", [2, 2.5, -0.1, True, "0.3"])
def test_a_margin_outside_the_cosine_range_names_the_key(margin, make_cfg):
    with pytest.raises(ConfigError, match=r"^config error: loss.margin: must be in \[0, 2\)"):
        InfoNCELoss(margin=margin)
    if not isinstance(margin, str | bool):
        from hbt.plan import plan_training

        with pytest.raises(ConfigError, match=r"^config error: loss.margin"):
            plan_training(make_cfg("train", [f"loss.margin={margin}"]))


def test_warmup_linear_step_by_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_linear(optimizer, total_steps=10, warmup_ratio=0.2)  # warmup: ceil(10 * 0.2) = 2 steps
    rates = []
    for _ in range(11):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0])
    # At least one step of warmup, and never below zero past the end.
    tiny = warmup_linear(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=3, warmup_ratio=0.0)
    assert [tiny.lr_lambdas[0](s) for s in range(5)] == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])


def grad_cache_and_reference(monkeypatch=None, compile_backend: str | None = None, keep: bool = False):
    """GradCache's gradients and the reference: the same chunks encoded with a graph in the same RNG order
    (so with the same dropout masks as GradCache's first pass), the loss on their concatenation. With
    ``compile_backend``, GradCache's encoder runs its training passes through torch.compile (``compile=true``)."""
    from test_loss_ddp import make_batch

    from hbt.grad_cache import GradCache
    from hbt.models.encoder import Encoder
    from hbt.module import RetrieverModule

    def module(compile_backend=None):
        torch.manual_seed(0)
        encoder = Encoder(tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64})
        for layer in encoder.modules():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = 0.3  # dropout on: every pass draws its own masks unless the RNG is replayed
        if compile_backend is not None:
            encoder.compile_for_training("default", backend=compile_backend)
        return RetrieverModule(encoder, InfoNCELoss(0.05), optimizer=torch.optim.AdamW, grad_cache=GradCache(3))

    batch = make_batch()
    cached = module(compile_backend)
    torch.manual_seed(1)
    cached.batch_loss(batch)[0].backward()
    got = {n: p.grad.clone() for n, p in cached.encoder.named_parameters() if p.grad is not None}

    reference = module()
    torch.manual_seed(1)

    def chunked(kind):  # GradCache's chunks (rows sorted by length), back in the batch's row order
        order, chunks = GradCache(3).chunks(batch[kind])
        return torch.cat([reference.encoder(chunk) for chunk in chunks])[torch.argsort(order)]

    embeddings = {kind: chunked(kind) for kind in ("query", "passage")}
    loss, _ = reference.contrastive_loss(embeddings["query"], embeddings["passage"], None, reference.batch_keys(batch))
    loss.backward()
    want = {n: p.grad.clone() for n, p in reference.encoder.named_parameters() if p.grad is not None}
    return (got, want, cached) if keep else (got, want)


def test_grad_cache_replays_the_rng_so_dropout_masks_match_with_dropout_on():
    got, want = grad_cache_and_reference()
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_training_passes_match_eager_through_grad_cache():
    """compile=true (``Encoder.compile_for_training``) with GradCache: its no-grad pass and its pass with
    gradients go through the compiled backbone, with the RNG replayed between them, and give the gradients
    of the eager whole batch; the state dict is unchanged and evaluation stays eager. ``aot_eager`` here
    (dynamo's capture and AOTAutograd, eager kernels); with inductor's generated code (its own random
    numbers) and both encoders compiled, the same check gave a largest gradient difference of 1.0e-6 and
    failed without the replay, by hand (67 s: not in CI). Inductor under DDP: docs/models.md."""
    import torch._dynamo
    import torch._dynamo.utils

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    got, want, cached = grad_cache_and_reference(compile_backend="aot_eager", keep=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 2  # the compiled backbone ran, without gradients and with them
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)
    assert not any("_orig_mod" in key for key in cached.encoder.state_dict())  # nothing registered twice
    cached.encoder.encode(["What currency is used in Japan?", "日本使用什么货币？"], "passage", precision="fp32")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # eval mode: eager
    with pytest.raises(ConfigError, match=r"^config error: compile: expected true, false or one of default, reduce-overhead"):
        cached.encoder.compile_for_training("fast")


def test_without_the_rng_replay_the_gradients_differ(monkeypatch):
    """The negative control of the test above: with the replay removed it must fail."""
    import hbt.grad_cache

    monkeypatch.setattr(hbt.grad_cache, "_set_rng_state", lambda state: None)
    got, want = grad_cache_and_reference()
    assert any(not torch.allclose(got[name], want[name], atol=1e-5, rtol=1e-4) for name in got)


@pytest.mark.parametrize("chunk", [0, -2, 2.5, True])
def test_a_bad_grad_cache_chunk_size_names_the_key(chunk, make_cfg):
    from hbt.plan import plan_training

    with pytest.raises(ConfigError, match=r"^config error: grad_cache.chunk_size: must be an integer >= 1"):
        plan_training(make_cfg("train", [f"grad_cache.chunk_size={chunk}"]))
    assert plan_training(make_cfg("train", [])).grad_cache is None  # null: off
    assert plan_training(make_cfg("train", ["grad_cache.chunk_size=4"])).grad_cache.chunk_size == 4

"""hbt's fixed cost per training step, counted in operators (each a kernel launch on a GPU, where a
small model's step is bound by launching them): what hbt adds to the hand-written step must not grow
with the batch, as the duplicate masking's former loop over the batch's rows did (256 extra operators
at batch 32, 755 against 499)."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_hbt_adds_a_fixed_number_of_operators_to_the_hand_written_step():
    import step_ops

    extra = {}
    for batch_size in (8, 32):
        args = SimpleNamespace(
            model="micro", batch_size=batch_size, max_length=64, steps=step_ops.STEP + 2, warmup=0, lr=3e-5, precision="32-true"
        )
        hbt, plain = step_ops.hbt_ops(args), step_ops.plain_ops(args)
        assert sum(plain.values()) > 100  # the profiler saw the step (forward, backward, optimizer)
        extra[batch_size] = sum(hbt.values()) - sum(plain.values())
    # Equal, but for one block of items related through an equal query text (a few operators), which
    # the larger batch of the toy data has.
    assert abs(extra[32] - extra[8]) <= 8, extra
    assert 0 < extra[32] < 100, extra

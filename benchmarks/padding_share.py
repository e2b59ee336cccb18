"""The share of computed tokens that are padding in a training batch, at the paper's batch of 100 with
mMARCO-like lengths (issue #32, item 1; goal: at most 5%).

Token lengths are drawn from log-normal distributions with an mMARCO-like shape (the assumption, stated
here because no mMARCO copy is on this machine): passages a median of 75 tokens (MS MARCO passages are
about 56 words; XLM-R's pieces run about 1.3 a word across mMARCO's languages), sigma 0.45, cut to
[8, 256]; queries a median of 10 tokens, sigma 0.4, cut to [3, 64]. Each way of cutting a batch into
encoder passes is then counted over ``--batches`` batches:

- one padded batch per kind (hbt's default without GradCache);
- ``model.length_groups`` = G: the rows sorted by length and encoded in at most G groups, each padded to
  its own longest row, cut where the fewest padded tokens remain (hbt's ``length_cuts``, exact), beside
  equal-sized groups (hbt's cut before);
- GradCache chunks of ``--chunk`` rows in batch order (hbt before its chunks were sorted), sorted by
  length (hbt now), and each chunk cut again by ``model.length_groups`` (GradCache encodes a chunk through
  the encoder's forward, which applies it).

    python benchmarks/padding_share.py
    python benchmarks/padding_share.py --batch 100 --chunk 25 --groups 2 4 8 16 32
"""

from __future__ import annotations

import argparse

import numpy as np

LENGTHS = {"query": (10, 0.4, 3, 64), "passage": (75, 0.45, 8, 256)}  # median, sigma, min, max


def draw(rng, kind: str, n: int) -> np.ndarray:
    median, sigma, low, high = LENGTHS[kind]
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), low, high).astype(int)


def cut_groups(ordered: np.ndarray, groups: int) -> list[np.ndarray]:
    from hbt.models.encoder import length_cuts

    return np.split(ordered, np.cumsum(length_cuts(ordered.tolist(), groups))[:-1])


def padded(parts: list[np.ndarray]) -> int:
    """Tokens computed when each part is padded to its own longest row."""
    return sum(len(part) * int(part.max()) for part in parts if len(part))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    ways = {"one padded batch": lambda rows: [rows]}
    for g in args.groups:
        ways[f"length_groups={g}, equal-sized groups"] = lambda rows, g=g: np.array_split(np.sort(rows)[::-1], g)
    for g in args.groups:
        ways[f"length_groups={g}, hbt's cut"] = lambda rows, g=g: cut_groups(np.sort(rows)[::-1], g)
    ways[f"GradCache chunks of {args.chunk}, batch order"] = lambda rows: [
        rows[i : i + args.chunk] for i in range(0, len(rows), args.chunk)
    ]
    sorted_chunks = lambda rows: [np.sort(rows)[::-1][i : i + args.chunk] for i in range(0, len(rows), args.chunk)]  # noqa: E731
    ways[f"GradCache chunks of {args.chunk}, sorted by length"] = sorted_chunks
    # GradCache encodes each chunk through the encoder's forward, which cuts it by length_groups in turn
    ways[f"GradCache chunks of {args.chunk}, sorted, length_groups=4"] = lambda rows: [
        part for chunk in sorted_chunks(rows) for part in cut_groups(chunk, 4)
    ]
    real = {kind: 0 for kind in LENGTHS}
    computed = {(way, kind): 0 for way in ways for kind in LENGTHS}
    for _ in range(args.batches):
        for kind in LENGTHS:
            rows = draw(rng, kind, args.batch)
            real[kind] += int(rows.sum())
            for way, cut in ways.items():
                computed[way, kind] += padded(cut(rows))
    print(f"batch {args.batch}, {args.batches} batches, mMARCO-like lengths (see the docstring); goal: padding <= 5% of computed tokens")
    print("| encoder passes | queries | passages | all | goal met |")
    print("|---|---|---|---|---|")
    for way in ways:
        shares = [1 - real[kind] / computed[way, kind] for kind in LENGTHS]
        total = 1 - sum(real.values()) / sum(computed[way, kind] for kind in LENGTHS)
        print(f"| {way} | {shares[0]:.1%} | {shares[1]:.1%} | {total:.1%} | {'yes' if total <= 0.05 else 'no'} |")


if __name__ == "__main__":
    main()

"""Retrieval evaluation: benchmarks (XQuAD-R, MLQA-R, Tatoeba, built-in), metrics, the evaluator, the callback."""

"""hbt: hybrid batch training of multilingual dense retrievers.

Pipeline, one module per stage: data (parallel QA items) -> sampling (X-X / X-Y / hybrid batches)
-> models.encoder + loss (InfoNCE) -> module (LightningModule) -> eval (retrieval benchmarks)
-> tasks (train / evaluate entry points, results.json).
"""

__version__ = "0.1.0"

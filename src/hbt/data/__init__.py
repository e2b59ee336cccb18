"""Parallel question-passage data: schema, built-in corpus, file loaders and the DataModule."""

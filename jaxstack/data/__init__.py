"""Data: Grain pipelines, tokenizers, mixtures, chat templates and agent data (``adp``)."""

"""Data: Grain pipelines, tokenizers, mixtures, chat templates and agent data (``adp``).

* :mod:`jaxstack.data.sources` -- JSONL / Parquet / ArrayRecord documents as Grain ``MapDataset``s;
* :mod:`jaxstack.data.tfds_builders` -- a TFDS builder for local corpora (ArrayRecord, no TensorFlow);
* :mod:`jaxstack.data.tokenizer` -- local HF ``tokenizer.json`` files and byte-level BPE training;
* :mod:`jaxstack.data.embedded` -- the embedded default corpus (web, code, literature, math hi / lo);
* :mod:`jaxstack.data.mixture` -- SmolLM2 stage schedules and the resumable token-share mixture;
* :mod:`jaxstack.data.chat` -- the ChatML / SmolTalk template, assistant loss masks, first-fit packing;
* :mod:`jaxstack.data.lm`, :mod:`jaxstack.data.corpus` -- single-corpus LM windows (the demo).
"""

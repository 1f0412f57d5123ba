"""Language-model batches: tokenise, append EOS, concatenate, split into fixed windows, batch with Grain.

The Grain iterator is checkpointable (its state goes into every Orbax checkpoint), so a resumed run
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np


def pack_documents(documents: Sequence[Sequence[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """Concatenate-then-split: documents + EOS joined and cut into windows [N, seq_len + 1] (int32).

    Each window holds seq_len + 1 tokens so that inputs = w[:-1] and targets = w[1:]. The final
    partial window (fewer than seq_len + 1 tokens) is not emitted; ``ValueError`` if nothing fits.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len: expected a positive integer, got {seq_len}")
    stream = np.fromiter(
        (t for doc in documents for t in (*doc, eos_id)), dtype=np.int32
    )
    window = seq_len + 1
    count = len(stream) // window
    if count == 0:
        raise ValueError(f"documents: {len(stream)} tokens do not fill one window of {window}")
    return stream[: count * window].reshape(count, window)


def lm_dataset(windows: np.ndarray, batch_size: int, *, seed: int, shuffle: bool = True, repeat: bool = True):
    """Grain IterDataset of batches {"tokens": [batch_size, seq_len + 1] int32} over packed windows."""
    if batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if len(windows) < batch_size:
        raise ValueError(f"windows: {len(windows)} windows cannot fill a batch of {batch_size}")
    dataset = grain.MapDataset.source(windows)
    if repeat:
        dataset = dataset.repeat(None)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.map(lambda w: {"tokens": w}).batch(batch_size, drop_remainder=True)
    return dataset.to_iter_dataset()

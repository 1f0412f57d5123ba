"""The embedded default corpus: text every Python install carries, so demos and tests need no download.

``pydoc_topics``: CPython's ``pydoc_data.topics`` (the language reference's help topics, ~465k
characters of English technical prose; PSF licence), split into paragraph-sized documents.

:func:`heldout_split` is jaxstack's one held-out rule for a list of documents (every 20th document
is validation); the default corpus, the embedded corpus' text sources and ``jaxstack train
--text-dir`` all split with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

_Document = TypeVar("_Document")

#: document ``i`` of a list is held out for validation iff ``i % HELDOUT_EVERY == HELDOUT_EVERY - 1``
HELDOUT_EVERY = 20


def heldout_split(documents: Sequence[_Document], split: str) -> list[_Document]:
    """The ``"train"`` or ``"validation"`` part of ``documents`` (order kept): every 20th document
    (index ``i % 20 == 19``) is validation, the rest is training; fewer than 20 documents leave the
    validation part empty. Deterministic and independent of the documents' content."""
    if split not in ("train", "validation"):
        raise ValueError(f"split: expected 'train' or 'validation', got {split!r}")
    held_out = split == "validation"
    return [d for i, d in enumerate(documents) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held_out]


def pydoc_topics() -> list[str]:
    """Documents (paragraph groups of at most ~2000 characters) from ``pydoc_data.topics``, in a fixed order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # some distributions strip pydoc_data
        raise RuntimeError(
            "default corpus: this Python has no pydoc_data module (part of the standard library); "
            "install a full CPython or pass your own text files"
        ) from error
    documents = []
    for name in sorted(topics):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", topics[name]) if p.strip()]
        current = ""
        for paragraph in paragraphs:
            if current and len(current) + len(paragraph) > 2000:
                documents.append(current)
                current = ""
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current:
            documents.append(current)
    return documents


def default_corpus(split: str = "train") -> list[str]:
    """The default corpus' ``train`` or ``validation`` documents (every 20th document is validation)."""
    if split not in ("train", "validation", "all"):
        raise ValueError(f"split: expected 'train', 'validation' or 'all', got {split!r}")
    documents = pydoc_topics()
    return documents if split == "all" else heldout_split(documents, split)

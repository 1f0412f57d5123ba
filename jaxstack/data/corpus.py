"""The embedded default corpus: text every Python install carries, so demos and tests need no download.

``pydoc_topics``: CPython's ``pydoc_data.topics`` (the language reference's help topics, ~465k
characters of English technical prose; PSF licence), split into paragraph-sized documents. A fixed,
deterministic split holds out every 20th document for evaluation.
"""

from __future__ import annotations

import re


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
    if split == "all":
        return documents
    held_out = split == "validation"
    return [d for i, d in enumerate(documents) if (i % 20 == 19) == held_out]

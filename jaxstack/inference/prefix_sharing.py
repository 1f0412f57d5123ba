"""Prefix-shared request packing for the log-likelihood scorer (:mod:`jaxstack.inference.scoring`).

Every request with the same context tokens is one piece of a row: the context once, then each
distinct continuation (minus its last token, which is only a target) as a branch that sees the
context and itself (:func:`tree_attention_allowed`). Pieces are packed first-fit into rows of a
bucketed length (:func:`pack_rows`) and laid out as arrays (:func:`tree_batch`). Host-side numpy
only, except the mask, which runs inside the scorer's jitted forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import numpy as np


def tree_attention_allowed(segment_ids: jax.Array, branch_ids: jax.Array) -> jax.Array:
    """[B, T, T] bool: query t may see key s iff both are in the same segment and s is on the trunk
    (branch 0, the shared context) or on t's own branch. ANDed with the causal mask by the model.

    segment_ids, branch_ids: [B, T] int.
    """
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    key_branch = branch_ids[:, None, :]
    return same_segment & ((key_branch == 0) | (key_branch == branch_ids[:, :, None]))


@dataclass
class Piece:
    """One context and some of its continuations (``branches``: (continuation, request indices)).
    ``footprint``: its input tokens in a row; ``n_scored``: its logits positions."""

    context: tuple[int, ...]
    branches: list[tuple[tuple[int, ...], list[int]]] = field(default_factory=list)
    footprint: int = 0
    n_scored: int = 0

    def __post_init__(self):
        self.footprint = len(self.context)

    def add(self, continuation: tuple[int, ...], owners: list[int]) -> None:
        self.branches.append((continuation, owners))
        self.footprint += len(continuation) - 1
        self.n_scored += len(continuation)


def split_pieces(sequences: Sequence[Sequence[int]], lengths: Sequence[int], max_row: int,
                 offset: int = 0) -> list[Piece]:
    """Groups requests by context (then by continuation: identical requests are scored once) and
    splits a group whose footprint exceeds ``max_row`` into pieces that repeat the context. Request
    indices (the owners) start at ``offset``."""
    groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
    for index, (sequence, n) in enumerate(zip(sequences, lengths), start=offset):
        context, continuation = tuple(sequence[:-n]), tuple(sequence[-n:])
        groups.setdefault(context, {}).setdefault(continuation, []).append(index)
    pieces = []
    for context, branches in groups.items():
        piece = Piece(context)
        for continuation, owners in branches.items():
            if piece.branches and piece.footprint + len(continuation) - 1 > max_row:
                pieces.append(piece)
                piece = Piece(context)
            piece.add(continuation, owners)
        pieces.append(piece)
    return pieces


def context_chunks(requests: Sequence[tuple[str, str]], size: int) -> list[tuple[int, int]]:
    """[first, last) index ranges of about ``size`` requests each, cut only where the context string
    changes (so the choices of one item stay together and can share their context)."""
    bounds, first = [], 0
    for index in range(1, len(requests) + 1):
        if index == len(requests) or (index - first >= size and requests[index][0] != requests[index - 1][0]):
            bounds.append((first, index))
            first = index
    return bounds


def pack_rows(pieces: Sequence[Piece], rows: int, row_length: int) -> list[list[Piece]]:
    """First-fit of ``pieces`` (in order) into at most ``rows`` rows of ``row_length`` tokens; stops at
    the first piece that fits nowhere. Returns the filled rows (their pieces consumed in order)."""
    filled: list[list[Piece]] = []
    free: list[int] = []
    for piece in pieces:
        need = piece.footprint
        for row, room in enumerate(free):
            if need <= room:
                filled[row].append(piece)
                free[row] -= need
                break
        else:
            if len(filled) == rows or need > row_length:
                break
            filled.append([piece])
            free.append(row_length - need)
    return filled


def tree_batch(packed: Sequence[Sequence[Piece]], rows: int, row_length: int, scored_length: int):
    """Arrays for one prefix-shared batch and where each branch's scores land.

    Returns (tokens, positions, segment_ids, branch_ids [rows, row_length], indices, targets
    [rows, scored_length], spans: list of (row, first scored column, n, request indices)).
    Padding: segment 0, branch 0, position 0 (it only attends to padding; its scores are ignored).
    """
    tokens = np.zeros((rows, row_length), np.int32)
    positions = np.zeros((rows, row_length), np.int32)
    segments = np.zeros((rows, row_length), np.int32)
    branch_ids = np.zeros((rows, row_length), np.int32)
    indices = np.zeros((rows, scored_length), np.int32)
    targets = np.zeros((rows, scored_length), np.int32)
    ramp = np.arange(row_length, dtype=np.int32)
    spans = []
    for row, pieces in enumerate(packed):
        slot = column = branch = 0
        for segment, piece in enumerate(pieces, start=1):
            n_context = len(piece.context)
            tokens[row, slot:slot + n_context] = piece.context
            positions[row, slot:slot + n_context] = ramp[:n_context]
            segments[row, slot:slot + piece.footprint] = segment
            last_context_slot = slot + n_context - 1
            slot += n_context
            for continuation, owners in piece.branches:
                branch += 1
                n = len(continuation)
                tokens[row, slot:slot + n - 1] = continuation[:-1]
                positions[row, slot:slot + n - 1] = ramp[n_context:n_context + n - 1]
                branch_ids[row, slot:slot + n - 1] = branch
                indices[row, column] = last_context_slot
                indices[row, column + 1:column + n] = ramp[slot:slot + n - 1]
                targets[row, column:column + n] = continuation
                spans.append((row, column, n, owners))
                slot += n - 1
                column += n
    return tokens, positions, segments, branch_ids, indices, targets, spans


__all__ = ["Piece", "context_chunks", "pack_rows", "split_pieces", "tree_attention_allowed", "tree_batch"]

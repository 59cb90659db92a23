"""Exact attention for what the INT8 kernel cannot take, met only when the op runs.

A site compiled with symbolic shapes (``torch.compile(..., dynamic=True)``) is rewritten to INT8 without
knowing its head dim; the op then sees the real one. Where the kernel cannot take it (a head dim above
``numerics.MAX_HEAD_DIM``, a value head dim other than the query's) the op computes the site's attention
exactly from the 16/32-bit inputs the rewrite handed it, with one log line per shape, instead of a wrong or
failing INT8 answer.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger("intfa_compile")


def band_mask(n_q: int, n_k: int, causal_offset: int, window_left: int, device: torch.device) -> Tensor:
    """The boolean (n_q, n_k) mask of what ``is_causal`` with ``causal_offset`` and ``window_left`` keeps."""
    keep = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(causal_offset)
    if window_left >= 0:
        keep = keep.triu(causal_offset - window_left)
    return keep


@functools.cache
def _log_once(shape: tuple[int, ...], problem: str) -> None:
    log.warning("intfa: attention of query shape %s computed exactly in 16/32-bit: %s", shape, problem)


def exact_attention(exact: Sequence[Tensor | None], attn_mask: Tensor | None, is_causal: bool, sm_scale: float,
                    causal_offset: int, window_left: int, problem: str) -> Tensor:
    """softmax(Q·Kᵀ·scale + mask)·V from ``exact`` = (query, key, value, factor), where the scale is ``sm_scale``
    times the 0-d ``factor`` if there is one (a scale known only at run time). The causal band and the mask mean
    what they mean for ``intfa::int8_attention``; ``problem`` says why the kernel could not (logged once per
    shape)."""
    query, key, value, factor = exact
    if factor is not None:
        query = (query.float() * factor.float()).to(query.dtype)
    _log_once(tuple(query.shape), problem)
    mask = attn_mask
    if is_causal:
        band = band_mask(query.shape[-2], key.shape[-2], causal_offset, window_left, query.device)
        if mask is None:
            mask = band
        elif mask.dtype == torch.bool:
            mask = mask & band
        else:
            mask = mask.masked_fill(~band, float("-inf"))
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=sm_scale,
                                          enable_gqa=query.shape[1] != key.shape[1])

"""Hand-written attention, as models write it, matched in Inductor's joint graph and rewritten to INT8.

Each ``Form`` names one way of writing softmax(Q·Kᵀ·scale + mask)·V: where the scale is applied
(multiplied into the scores, divided out of them, multiplied into or divided out of Q, or absent), how the mask enters
(added, added after a position bias as T5 does, or ``masked_fill(mask, -inf)``), whether K and V
are repeated for GQA the way Hugging Face's ``repeat_kv`` does, and whether it is batched over 4-D
(B, H, N, D) tensors with ``matmul`` or over 3-D (B·H, N, D) tensors with ``bmm``/``baddbmm`` as
``nn.MultiheadAttention`` does.

``search_function`` writes a form as a small traced function and ``replacement_function`` pairs it
with its INT8 replacement; ``handwritten_patterns`` traces every form and registers each pair with
Inductor's ``register_replacement``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._inductor.pattern_matcher import Match, PatternMatcherPass, fwd_only, register_replacement

from intfa_compile.ops import mask_broadcasts_to

from .attention_site import AttentionSite
from .causal_masks import fold_causal_mask
from .rewrite import decide, forget_last_approved, int8_attention, last_approved, leave_alone

# Distinct values that let the tracer tell a scale argument apart (see register_replacement).
_SCALE_WORKAROUND = {"scale": 0.3183, "inv_scale": 3.1831}


@dataclass(frozen=True)
class Form:
    """One way of writing attention by hand."""

    scale: str  # "mul" | "div" (on the scores) | "query" | "query_div" (on q) | "none"
    mask: str  # "none" | "add" | "bias_add" | "masked_fill"
    gqa: bool = False
    batched_3d: bool = False

    @property
    def name(self) -> str:
        parts = ["bmm3d" if self.batched_3d else "matmul", f"scale_{self.scale}", f"mask_{self.mask}"]
        if self.gqa:
            parts.append("repeat_kv")
        return "-".join(parts)

    @property
    def argnames(self) -> list[str]:
        names = ["query", "key", "value"]
        if self.mask == "bias_add":
            names.append("position_bias")
        if self.mask != "none":
            names.append("attn_mask")
        if self.scale in ("mul", "query"):
            names.append("scale")
        elif self.scale in ("div", "query_div"):
            names.append("inv_scale")
        return names


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    # Hugging Face's repeat_kv: (B, Hk, N, D) → (B, Hk·n_rep, N, D) by expand and reshape.
    batch, heads, n, dim = x.shape
    return x[:, :, None, :, :].expand(batch, heads, n_rep, n, dim).reshape(batch, heads * n_rep, n, dim)


def _with_signature(fn: Callable, argnames: list[str]) -> Callable:
    """``fn(**kwargs)`` as a function of exactly the positional parameters ``argnames``.

    The pattern matcher and the tracer read a pattern's parameters from its code object, so the
    wrapper is a real function with that signature (generated from our own fixed names).
    """
    params = ", ".join(argnames)
    source = f"def {fn.__name__}({params}):\n    return fn({', '.join(f'{a}={a}' for a in argnames)})\n"
    namespace: dict = {"fn": fn}
    exec(source, namespace)  # noqa: S102 - names are ours, not user input
    return namespace[fn.__name__]


def search_function(form: Form) -> Callable:
    """The attention ``form`` as plain PyTorch, to be traced into a pattern."""

    def attention(query, key, value, attn_mask=None, position_bias=None, scale=None, inv_scale=None):
        if form.gqa:
            n_rep = query.shape[1] // key.shape[1]
            key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
        q = query * scale if form.scale == "query" else query / inv_scale if form.scale == "query_div" else query
        if form.batched_3d:
            k_t = key.transpose(-2, -1)
            scores = torch.baddbmm(attn_mask, q, k_t) if form.mask == "add" else torch.bmm(q, k_t)
        else:
            scores = torch.matmul(q, key.transpose(-2, -1))
            if form.scale == "mul":
                scores = scores * scale
            elif form.scale == "div":
                scores = scores / inv_scale
            if form.mask == "bias_add":
                scores = scores + position_bias + attn_mask
            elif form.mask == "add":
                scores = scores + attn_mask
            elif form.mask == "masked_fill":
                # masked_fill(mask, -inf), written as the joint graph holds it after Inductor's canonicalization
                minus_inf = torch.full([], float("-inf"), dtype=scores.dtype, device=scores.device)
                scores = torch.where(attn_mask, minus_inf, scores)
        probs = torch.softmax(scores, dim=-1)
        return torch.bmm(probs, value) if form.batched_3d else torch.matmul(probs, value)

    return _with_signature(attention, form.argnames)


def replacement_function(form: Form) -> Callable:
    """What replaces ``form``: the same attention through ``intfa::int8_attention``."""

    def replacement(query, key, value, attn_mask=None, position_bias=None, scale=None, inv_scale=None):
        site = last_approved()  # the site this match was approved as: its mask may have become the causal flag
        is_causal, causal_offset, window_left = ((site.is_causal, site.causal_offset, site.window_left)
                                                 if site is not None else (False, 0, -1))
        if form.scale in ("mul", "query"):
            sm_scale = scale
        elif form.scale in ("div", "query_div"):
            sm_scale = 1.0 / inv_scale
        else:
            sm_scale = 1.0
        mask = attn_mask
        if is_causal:
            mask = None  # the mask only said "causal": the kernel's causal flag computes it without reading it
        elif form.mask == "bias_add":
            mask = position_bias + attn_mask
        elif form.mask == "masked_fill":
            mask = ~attn_mask  # masked_fill marks what to drop; SDPA's boolean masks mark what to keep
        elif form.mask == "add" and attn_mask.dtype == torch.bool:
            mask = attn_mask.to(query.dtype)  # scores + bool adds 0 or 1; the op would read a bool as keep/drop
        if form.batched_3d:
            if mask is not None and mask.dim() == 3:
                mask = mask.unsqueeze(0)
            out = int8_attention(query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0), mask, is_causal, sm_scale,
                                 causal_offset, window_left)
            return out.squeeze(0)
        return int8_attention(query, key, value, mask, is_causal, sm_scale, causal_offset, window_left)

    return _with_signature(replacement, form.argnames)


def _site(form: Form, match: Match) -> AttentionSite:
    """The site of a match; a mask that only says "causal" becomes the causal flag (``causal_masks``)."""
    kwargs = match.kwargs
    site = AttentionSite(
        anchor=match.output_node(),
        form=f"hand-written ({form.name})",
        query=kwargs["query"],
        key=kwargs["key"],
        value=kwargs["value"],
        attn_mask=kwargs.get("attn_mask"),
        is_causal=False,
        scale=None,
        batch_of_one=form.batched_3d,
    )
    mask = site.mask_tensor
    if form.mask == "masked_fill" or (form.mask == "add" and mask is not None and mask.dtype != torch.bool):
        return fold_causal_mask(site, drops=form.mask == "masked_fill")
    return site


def _extra_check(form: Form) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        forget_last_approved()
        site = _site(form, match)
        if form.mask == "bias_add":
            bias, q, k = (match.kwargs[name].meta.get("val") for name in ("position_bias", "query", "key"))
            if not mask_broadcasts_to(bias.shape, (q.shape[0], q.shape[1], q.shape[2], k.shape[2])):
                return leave_alone(site, f"position bias {tuple(bias.shape)} does not broadcast to the scores")
        return decide(site)

    return check


FORMS: tuple[Form, ...] = (
    *(Form(scale, mask, gqa=gqa) for scale in ("mul", "div") for mask in ("none", "add") for gqa in (False, True)),
    *(Form(scale, mask) for scale in ("query", "query_div", "none") for mask in ("none", "add")),
    *(Form(scale, "bias_add") for scale in ("mul", "none")),
    *(Form(scale, "masked_fill") for scale in ("mul", "div")),
    Form("query", "none", batched_3d=True),
    Form("query", "add", batched_3d=True),
)
"""The forms registered. An fp32 upcast of the softmax needs no form of its own: Inductor's
decomposition of a 16-bit softmax already computes in fp32, so both trace to the same graph."""


def _example_inputs(form: Form, dtype: torch.dtype, heads_major: bool) -> list:
    """Inputs to trace ``form`` with: (B, H, N, D) stored heads-major, or as a transposed (B, N, H, D)
    tensor the way projections produce them (matmul copies the latter, so the graphs differ)."""

    def tensor(*shape, dtype=dtype):
        return torch.empty(shape, dtype=dtype)

    def qkv(batch, heads, n, dim):
        if heads_major:
            return tensor(batch, heads, n, dim)
        return tensor(batch, n, heads, dim).transpose(1, 2)

    if form.batched_3d:
        inputs = [tensor(8, 8, 16) if heads_major else tensor(8, 8, 16).transpose(0, 1) for _ in range(3)]
        mask_shape = (8, 8, 8)
    else:
        heads_kv = 2 if form.gqa else 4
        inputs = [qkv(2, 4, 8, 16), qkv(2, heads_kv, 8, 16), qkv(2, heads_kv, 8, 16)]
        mask_shape = (2, 1, 8, 8)
    if form.mask == "bias_add":
        inputs.append(tensor(1, 4, 8, 8))
    if form.mask in ("add", "bias_add"):
        inputs.append(tensor(*mask_shape))
    elif form.mask == "masked_fill":
        inputs.append(tensor(*mask_shape, dtype=torch.bool))
    if form.scale in ("mul", "query"):
        inputs.append(_SCALE_WORKAROUND["scale"])
    elif form.scale in ("div", "query_div"):
        inputs.append(_SCALE_WORKAROUND["inv_scale"])
    return inputs


@functools.cache
def handwritten_patterns() -> PatternMatcherPass:
    """Every ``Form`` traced for fp32 and fp16, heads-major and transposed inputs, registered in one
    pattern pass (built once per process)."""
    patterns = PatternMatcherPass(pass_name="intfa_handwritten_attention")
    for form in FORMS:
        workaround = {k: v for k, v in _SCALE_WORKAROUND.items() if k in form.argnames}
        for dtype, heads_major in itertools.product((torch.float32, torch.float16), (True, False)):
            register_replacement(
                search_function(form),
                replacement_function(form),
                _example_inputs(form, dtype, heads_major),
                fwd_only,
                patterns,
                extra_check=_extra_check(form),
                scalar_workaround=workaround,
                skip_duplicates=True,
            )
    return patterns

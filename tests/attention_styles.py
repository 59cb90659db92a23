"""Attention as real codebases write it by hand: the catalog the structural matcher is held to.

Each style is a small module that computes attention the way the named codebase does (the same ops in the
same order: where the scale goes, how the mask enters, how heads are laid out, which product op), on
(B, N, C) hidden states with its own projections. ``STYLES`` maps a name to (constructor, what it is);
``tests/test_attention_styles.py`` runs each under the backend with Inductor's own attention fusion on and
off, and the table of styles in ``docs/supported-attention.md`` is generated from it
(``python -m tests.attention_styles``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BATCH, SEQ, HEADS, HEAD_DIM = 2, 48, 4, 16
HIDDEN = HEADS * HEAD_DIM


class _Projected(nn.Module):
    """Q, K, V projections of hidden states; subclasses attend."""

    def __init__(self, kv_heads: int = HEADS) -> None:
        super().__init__()
        self.kv_heads = kv_heads
        self.q = nn.Linear(HIDDEN, HIDDEN)
        self.k = nn.Linear(HIDDEN, kv_heads * HEAD_DIM)
        self.v = nn.Linear(HIDDEN, kv_heads * HEAD_DIM)

    def heads(self, x: Tensor, heads: int = HEADS) -> Tensor:
        """(B, N, heads·D) → (B, heads, N, D), as most codebases split heads."""
        return x.view(x.shape[0], x.shape[1], heads, HEAD_DIM).transpose(1, 2)

    def merge(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], HIDDEN)


def _padding_mask(batch: int = BATCH, seq: int = SEQ) -> Tensor:
    """1 = keep, 0 = pad; the second sequence has 10 padded keys (Hugging Face's attention_mask)."""
    mask = torch.ones(batch, seq)
    mask[1, -10:] = 0
    return mask


class HFBertSelfAttention(_Projected):
    """transformers' BertSelfAttention (eager): scores / √d + extended additive mask (finfo.min), dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden: Tensor) -> Tensor:
        q, k, v = self.heads(self.q(hidden)), self.heads(self.k(hidden)), self.heads(self.v(hidden))
        extended = (1.0 - _padding_mask()[:, None, None, :]) * torch.finfo(hidden.dtype).min
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores / math.sqrt(HEAD_DIM)
        scores = scores + extended
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        return self.merge(torch.matmul(probs, v))


class HFGPT2Attention(_Projected):
    """transformers' GPT2Attention (legacy eager): division by a ``torch.full`` tensor, a boolean causal buffer
    sliced to the lengths, ``torch.where`` with finfo.min."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(64, 64, dtype=torch.bool)).view(1, 1, 64, 64),
                             persistent=False)

    def forward(self, hidden: Tensor) -> Tensor:
        q, k, v = self.heads(self.q(hidden)), self.heads(self.k(hidden)), self.heads(self.v(hidden))
        weights = torch.matmul(q, k.transpose(-1, -2))
        weights = weights / torch.full([], v.size(-1) ** 0.5, dtype=weights.dtype, device=weights.device)
        q_len, k_len = q.size(-2), k.size(-2)
        causal = self.bias[:, :, k_len - q_len:k_len, :k_len]
        mask_value = torch.full([], torch.finfo(weights.dtype).min, dtype=weights.dtype, device=weights.device)
        weights = torch.where(causal, weights.to(weights.dtype), mask_value)
        weights = nn.functional.softmax(weights, dim=-1).type(v.dtype)
        return self.merge(torch.matmul(weights, v))


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    batch, heads, n, dim = x.shape
    return x[:, :, None, :, :].expand(batch, heads, n_rep, n, dim).reshape(batch, heads * n_rep, n, dim)


class HFLlamaAttention(_Projected):
    """transformers' LlamaAttention (eager_attention_forward): GQA by ``repeat_kv``, ``* scaling``, a float
    causal mask sliced to the key length, softmax in fp32 cast back."""

    def __init__(self) -> None:
        super().__init__(kv_heads=2)

    def forward(self, hidden: Tensor) -> Tensor:
        q = self.heads(self.q(hidden))
        k, v = self.heads(self.k(hidden), 2), self.heads(self.v(hidden), 2)
        n = hidden.shape[1]
        causal = torch.full((n, n), torch.finfo(hidden.dtype).min).triu(1)[None, None]
        key, value = _repeat_kv(k, HEADS // 2), _repeat_kv(v, HEADS // 2)
        weights = torch.matmul(q, key.transpose(2, 3)) * HEAD_DIM**-0.5
        weights = weights + causal[:, :, :, : key.shape[-2]]
        weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
        weights = nn.functional.dropout(weights, p=0.0, training=self.training)
        return self.merge(torch.matmul(weights, value))


class HFT5Attention(_Projected):
    """transformers' T5Attention: no scale, a learned relative position bias plus the padding mask added to the
    scores, softmax over ``scores.float()`` cast back with ``type_as``."""

    def __init__(self) -> None:
        super().__init__()
        self.relative_attention_bias = nn.Embedding(32, HEADS)

    def forward(self, hidden: Tensor) -> Tensor:
        q, k, v = self.heads(self.q(hidden)), self.heads(self.k(hidden)), self.heads(self.v(hidden))
        n = hidden.shape[1]
        positions = torch.arange(n)
        relative = (positions[None, :] - positions[:, None]).clamp(-15, 16) + 15
        bias = self.relative_attention_bias(relative).permute(2, 0, 1).unsqueeze(0)
        mask = (1.0 - _padding_mask()[:, None, None, :]) * torch.finfo(hidden.dtype).min
        scores = torch.matmul(q, k.transpose(3, 2))
        scores += bias + mask
        weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        return self.merge(torch.matmul(weights, v))


class DistilBertAttention(_Projected):
    """transformers' DistilBERT MultiHeadSelfAttention: q divided by √d before the product, the padding mask
    turned into ``mask == 0``, expanded and filled with finfo.min via ``masked_fill``."""

    def forward(self, hidden: Tensor) -> Tensor:
        q, k, v = self.heads(self.q(hidden)), self.heads(self.k(hidden)), self.heads(self.v(hidden))
        q = q / math.sqrt(HEAD_DIM)
        scores = torch.matmul(q, k.transpose(2, 3))
        mask = (_padding_mask() == 0).view(BATCH, 1, 1, SEQ).expand_as(scores)
        scores = scores.masked_fill(mask, torch.tensor(torch.finfo(scores.dtype).min))
        weights = nn.functional.softmax(scores, dim=-1)
        return self.merge(torch.matmul(weights, v))


class NanoGPTAttention(_Projected):
    """nanoGPT's CausalSelfAttention (slow path): ``(q @ kᵀ) * (1/√d)``, ``masked_fill(bias == 0, -inf)``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64))

    def forward(self, hidden: Tensor) -> Tensor:
        batch, t, channels = hidden.size()
        q, k, v = self.heads(self.q(hidden)), self.heads(self.k(hidden)), self.heads(self.v(hidden))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v
        return y.transpose(1, 2).contiguous().view(batch, t, channels)


class TimmViTAttention(nn.Module):
    """timm's vision-transformer Attention (non-fused path): one qkv projection split by reshape/permute/unbind,
    ``q * scale``, ``attn.softmax(dim=-1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.scale = HEAD_DIM**-0.5

    def forward(self, x: Tensor) -> Tensor:
        batch, n, channels = x.shape
        q, k, v = self.qkv(x).reshape(batch, n, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = attn @ v
        return x.transpose(1, 2).reshape(batch, n, channels)


def _to_batch_heads(t: Tensor) -> Tensor:
    """einops' rearrange(t, 'b n (h d) -> (b h) n d')."""
    batch, n, _ = t.shape
    return t.reshape(batch, n, HEADS, HEAD_DIM).permute(0, 2, 1, 3).reshape(batch * HEADS, n, HEAD_DIM)


class LatentDiffusionCrossAttention(nn.Module):
    """latent-diffusion / Stable Diffusion's CrossAttention: heads folded into the batch ('(b h) n d'), scores by
    ``einsum('b i d, b j d -> b i j') * scale`` against a context of another length."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.to_k = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.to_v = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.scale = HEAD_DIM**-0.5
        self.register_buffer("context", torch.randn(BATCH, 20, HIDDEN), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        q = _to_batch_heads(self.to_q(x))
        k, v = _to_batch_heads(self.to_k(self.context)), _to_batch_heads(self.to_v(self.context))
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", attn, v)
        batch = x.shape[0]
        return out.reshape(batch, HEADS, -1, HEAD_DIM).permute(0, 2, 1, 3).reshape(batch, -1, HIDDEN)


class LucidrainsAttention(_Projected):
    """lucidrains-style attention: heads by reshape ('b n (h d) -> b h n d'), ``einsum('b h i d, b h j d')``,
    a boolean key mask filled with ``-finfo.max``."""

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
        dots = torch.einsum("b h i d, b h j d -> b h i j", q, k) * HEAD_DIM**-0.5
        keep = _padding_mask().bool()[:, None, None, :]
        dots = dots.masked_fill(~keep, -torch.finfo(dots.dtype).max)
        attn = dots.softmax(dim=-1)
        out = torch.einsum("b h i j, b h j d -> b h i d", attn, v)
        return self.merge(out)


def _alibi_slopes(heads: int) -> Tensor:
    return torch.tensor([2 ** (-8 * (i + 1) / heads) for i in range(heads)])


class BloomAttention(_Projected):
    """transformers' BloomAttention: ``alibi.baddbmm(q, kᵀ, beta, alpha=1/√d)`` over (B·H, N, D), viewed to
    (B, H, N, N), ``masked_fill`` with finfo.min, softmax in fp32, ``bmm`` with (B·H) values."""

    def forward(self, hidden: Tensor) -> Tensor:
        batch, n, _ = hidden.shape
        q, k, v = (self.heads(proj(hidden)).reshape(batch * HEADS, n, HEAD_DIM) for proj in (self.q, self.k, self.v))
        positions = torch.arange(n, dtype=torch.float32)
        alibi = (_alibi_slopes(HEADS)[:, None] * positions[None, :]).repeat(batch, 1)[:, None, :]
        scores = alibi.baddbmm(batch1=q, batch2=k.transpose(1, 2), beta=1.0, alpha=1.0 / math.sqrt(HEAD_DIM))
        scores = scores.view(batch, HEADS, n, n)
        causal = torch.ones(n, n, dtype=torch.bool).triu(1)[None, None]
        weights = torch.masked_fill(scores, causal, torch.finfo(scores.dtype).min)
        probs = F.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
        context = torch.bmm(probs.view(batch * HEADS, n, n), v)
        return context.view(batch, HEADS, n, HEAD_DIM).transpose(1, 2).reshape(batch, n, HIDDEN)


class GPTNeoXAttention(_Projected):
    """transformers' GPTNeoXAttention (older eager): ``baddbmm`` of a zero tensor with ``alpha`` the norm factor,
    ``torch.where`` on a boolean causal buffer, plus the padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(64, 64, dtype=torch.bool))[None, None], persistent=False)
        self.norm_factor = math.sqrt(HEAD_DIM)

    def forward(self, hidden: Tensor) -> Tensor:
        q, k, v = self.heads(self.q(hidden)), self.heads(self.k(hidden)), self.heads(self.v(hidden))
        batch, heads, n, dim = q.shape
        query, key = q.reshape(batch * heads, n, dim), k.reshape(batch * heads, n, dim)
        scores = torch.zeros(batch * heads, n, n, dtype=q.dtype, device=q.device)
        scores = torch.baddbmm(scores, query, key.transpose(1, 2), beta=1.0, alpha=1.0 / self.norm_factor)
        scores = scores.view(batch, heads, n, n)
        mask_value = torch.tensor(torch.finfo(scores.dtype).min, dtype=scores.dtype)
        scores = torch.where(self.bias[:, :, :n, :n], scores, mask_value)
        scores = scores + (1.0 - _padding_mask()[:, None, None, :]) * torch.finfo(scores.dtype).min
        weights = nn.functional.softmax(scores, dim=-1).to(v.dtype)
        return self.merge(torch.matmul(weights, v))


class MultiheadAttentionMath(nn.Module):
    """``F.multi_head_attention_forward``'s math path as written there: q scaled first, ``baddbmm`` with the
    additive mask over (B·H, N, D) heads-in-batch tensors, softmax, ``bmm``."""

    def __init__(self) -> None:
        super().__init__()
        self.in_proj = nn.Linear(HIDDEN, 3 * HIDDEN)

    def forward(self, x: Tensor) -> Tensor:
        batch, n, _ = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q, k, v = (t.transpose(0, 1).reshape(n, batch * HEADS, HEAD_DIM).transpose(0, 1) for t in (q, k, v))
        mask = torch.zeros(n, n).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        q_scaled = q * math.sqrt(1.0 / HEAD_DIM)
        weights = torch.baddbmm(mask.expand(batch * HEADS, n, n), q_scaled, k.transpose(-2, -1))
        weights = F.softmax(weights, dim=-1)
        out = torch.bmm(weights, v)
        return out.transpose(0, 1).reshape(n, batch, HIDDEN).transpose(0, 1)


class ALiBiAttention(_Projected):
    """ALiBi (Press et al. 2022) as MPT-style code writes it: scores · scale + slope · (j − i) + causal −inf."""

    def forward(self, hidden: Tensor) -> Tensor:
        q, k, v = self.heads(self.q(hidden)), self.heads(self.k(hidden)), self.heads(self.v(hidden))
        n = hidden.shape[1]
        positions = torch.arange(n)
        distance = (positions[None, :] - positions[:, None]).float()
        alibi = _alibi_slopes(HEADS)[:, None, None] * distance[None]
        scores = q @ k.transpose(-1, -2) * HEAD_DIM**-0.5 + alibi
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        return self.merge(torch.softmax(scores, dim=-1) @ v)


STYLES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "hf-bert": (HFBertSelfAttention, "Hugging Face BERT eager: matmul, / √d, + padding mask"),
    "hf-gpt2": (HFGPT2Attention, "Hugging Face GPT-2 eager: / torch.full(√d), where(causal buffer, ·, finfo.min)"),
    "hf-llama": (HFLlamaAttention, "Hugging Face LLaMA eager: repeat_kv (GQA), · scaling, + causal, fp32 softmax"),
    "hf-t5": (HFT5Attention, "Hugging Face T5: no scale, + position bias + mask, softmax(float).type_as"),
    "distilbert": (DistilBertAttention, "DistilBERT: q / √d, masked_fill(mask == 0, finfo.min)"),
    "nanogpt": (NanoGPTAttention, "nanoGPT: (q @ kᵀ) · 1/√d, masked_fill(bias == 0, -inf)"),
    "timm-vit": (TimmViTAttention, "timm ViT: fused qkv, q · scale, attn.softmax"),
    "ldm-cross": (LatentDiffusionCrossAttention, "latent diffusion cross-attention: einsum over (b·h) n d"),
    "lucidrains": (LucidrainsAttention, "lucidrains: einsum 'b h i d, b h j d', masked_fill(-finfo.max)"),
    "bloom": (BloomAttention, "Bloom: alibi.baddbmm(alpha=1/√d), masked_fill, fp32 softmax, bmm"),
    "gpt-neox": (GPTNeoXAttention, "GPT-NeoX: baddbmm(zeros, alpha), where(causal), + padding mask"),
    "mha-math": (MultiheadAttentionMath, "nn.MultiheadAttention math path: q scaled, baddbmm(mask), bmm"),
    "alibi": (ALiBiAttention, "ALiBi: · scale + slope · distance, causal masked_fill(-inf)"),
}


def hidden_states(name: str) -> Tensor:
    """The input a style runs on (B, N, C), fixed per style."""
    generator = torch.Generator().manual_seed(sum(map(ord, name)))
    return torch.randn(BATCH, SEQ, HIDDEN, generator=generator)


def supported_table() -> str:
    """The table of hand-written attention styles (``docs/supported-attention.md``): each compiled under the
    backend (Inductor's own attention fusion off, so what is shown is the structural matcher's), with what it saw
    and the cosine."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config

    from intfa_compile.sites import collect_sites, rewritten_sites

    lines = ["| style | written as | found as | INT8 | cosine to eager fp32 |", "|---|---|---|---|---|"]
    for name, (build, description) in STYLES.items():
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model, x = build().eval(), hidden_states(name)
        with torch.no_grad(), inductor_config.patch(pattern_matcher=False, fx_graph_cache=False), \
                collect_sites() as sites:
            eager = model(x)
            compiled = torch.compile(model, backend="intfa")(x)
        cosine = F.cosine_similarity(compiled.flatten().double(), eager.flatten().double(), dim=0).item()
        forms = "; ".join(site.form for site in sites) or "—"
        int8 = "yes" if rewritten_sites(counters["intfa"]) == len(sites) == 1 else "no"
        lines.append(f"| `{name}` | {description} | {forms} | {int8} | {cosine:.6f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(supported_table())

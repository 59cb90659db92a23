"""Small random-weight models that write attention in every way the field does, for the zoo test.

``python -m tests.model_zoo`` prints the model-zoo table of docs/supported-attention.md from a run over the zoo.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SEQ = 24


@dataclass(frozen=True)
class ZooModel:
    """One model: how to build it and its inputs, and how many attention layers it has."""

    name: str
    attention: str
    """How the model writes attention (the zoo table's first column)."""
    build: Callable[[], tuple[torch.nn.Module, dict]]
    layers: int


def _ids() -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, SEQ - 6:] = 0  # a padded sequence: key padding mask
    return {"input_ids": ids, "attention_mask": mask}


def _hf(config_name: str, model_name: str, impl: str, inputs: Callable[[], dict], **config) -> Callable:
    def build() -> tuple[torch.nn.Module, dict]:
        import transformers

        cfg = getattr(transformers, config_name)(**config)
        cfg._attn_implementation = impl
        torch.manual_seed(0)
        if model_name == "WhisperEncoder":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return WhisperEncoder(cfg).eval(), inputs()
        return getattr(transformers, model_name)(cfg).eval(), inputs()

    return build


def _decoder_ids() -> dict:
    return {"input_ids": _ids()["input_ids"]}


_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100)
SMALL_GQA = dict(_SMALL, num_key_value_heads=2)
"""A small GQA decoder (4 query heads on 2 KV heads, 2 layers): the zoo's and the export and generate tests'."""

_HF_MODELS = {
    "BERT": ("BertConfig", "BertModel", _ids, _SMALL),
    "RoBERTa": ("RobertaConfig", "RobertaModel", _ids, dict(_SMALL, pad_token_id=1)),
    "GPT-2": ("GPT2Config", "GPT2Model", _ids, dict(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                                   bos_token_id=0, eos_token_id=0)),
    "LLaMA (GQA)": ("LlamaConfig", "LlamaModel", _decoder_ids, SMALL_GQA),
    "Mistral (GQA)": ("MistralConfig", "MistralModel", _decoder_ids, SMALL_GQA),
    "Qwen2 (GQA)": ("Qwen2Config", "Qwen2Model", _decoder_ids, SMALL_GQA),
    "ViT": ("ViTConfig", "ViTModel", lambda: {"pixel_values": torch.randn(2, 3, 32, 32)},
            dict(_SMALL, image_size=32, patch_size=8)),
    "Whisper encoder": ("WhisperConfig", "WhisperEncoder", lambda: {"input_features": torch.randn(2, 16, 64)},
                        dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                             num_mel_bins=16, max_source_positions=32, decoder_layers=1, decoder_attention_heads=4,
                             vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                             decoder_start_token_id=1)),
    "T5 encoder (relative position bias)": ("T5Config", "T5EncoderModel", _ids,
                                            dict(d_model=64, num_layers=2, num_heads=4, d_ff=128, d_kv=16,
                                                 vocab_size=100)),
}


class TimmStyleAttention(torch.nn.Module):
    """A ViT block's attention as timm writes it by hand: scale on q, matmul, softmax, matmul."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, n, dim))


class MaskedFillAttention(torch.nn.Module):
    """Hand-written attention with a boolean padding mask applied by ``masked_fill(-inf)``."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        q, k, v = self.qkv(x).view(batch, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-2, -1)) / (dim // self.heads) ** 0.5
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        return torch.matmul(F.softmax(scores, dim=-1), v).transpose(1, 2).reshape(batch, n, dim)


class MultiheadAttentionBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


class HandWrittenCausal(torch.nn.Module):
    """Attention written out by hand with a causal mask built from positions, as Hugging Face's eager path does
    (KV-cache style: the queries are the last n_q of n_k positions), or with ``masked_fill(triu(ones), -inf)``."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n_q, n_k = q.shape[-2], k.shape[-2]
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        if self.spelling.startswith("positions"):
            query_positions, key_positions = torch.arange(n_k - n_q, n_k), torch.arange(n_k)
            keep = key_positions[None, :] <= query_positions[:, None]
            if self.spelling == "positions_sliding_window":  # Mistral's: kv_idx > q_idx − window, window 40
                keep = keep & (key_positions[None, :] > query_positions[:, None] - 40)
            mask = torch.zeros(n_q, n_k).masked_fill(~keep, torch.finfo(torch.float32).min)
            scores = scores + mask[None, None]
        else:
            drop = torch.ones(n_q, n_k, dtype=torch.bool).triu(1 + n_k - n_q)
            scores = scores.masked_fill(drop, float("-inf"))
        return scores.softmax(dim=-1) @ v


def _module(factory: Callable[[], torch.nn.Module], inputs: Callable[[], dict]) -> Callable:
    def build() -> tuple[torch.nn.Module, dict]:
        torch.manual_seed(0)
        return factory().eval(), inputs()

    return build


def _x() -> dict:
    return {"x": torch.randn(2, SEQ, 64, generator=torch.Generator().manual_seed(1))}


def _x_pad() -> dict:
    pad = torch.zeros(2, SEQ, dtype=torch.bool)
    pad[1, SEQ - 5:] = True
    return {**_x(), "pad": pad}


def _encoder() -> torch.nn.Module:
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def _src() -> dict:
    return {"src": _x()["x"]}


ZOO: tuple[ZooModel, ...] = (
    *(ZooModel(f"{name} [{impl}]", f"{name}, attn_implementation=\"{impl}\"",
               _hf(cfg, model, impl, inputs, **config), 2)
      for name, (cfg, model, inputs, config) in _HF_MODELS.items() for impl in ("eager", "sdpa")),
    ZooModel("nn.TransformerEncoder", "nn.TransformerEncoder (fast path off)", _module(_encoder, _src), 2),
    ZooModel("nn.MultiheadAttention", "nn.MultiheadAttention", _module(MultiheadAttentionBlock, _x), 1),
    ZooModel("timm-style ViT attention", "hand-written (timm ViT block)", _module(TimmStyleAttention, _x), 1),
    ZooModel("masked_fill attention", "hand-written, masked_fill(-inf) padding", _module(MaskedFillAttention, _x_pad),
             1),
)


def output_tensor(output: object) -> torch.Tensor:
    """The main tensor of a model's output (``last_hidden_state`` for Hugging Face models)."""
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output


def run(entry: ZooModel) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(eager output, intfa output, site records) for one zoo model, with PyTorch's MHA fast path off."""
    from intfa_compile.explain import bypassing_compile_caches
    from intfa_compile.sites import collect_sites

    model, inputs = entry.build()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), collect_sites() as sites, bypassing_compile_caches():
            eager = output_tensor(model(**inputs))
            compiled = output_tensor(torch.compile(model, backend="intfa")(**inputs))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return eager, compiled, list(sites)


def main() -> None:
    """Print the model-zoo table (docs/supported-attention.md) from a fresh run over the zoo."""
    from intfa_compile.sites import LEFT_ALONE

    logging.getLogger("intfa_compile").setLevel(logging.ERROR)
    print("| attention as written | INT8 sites | cosine vs eager fp32 | notes |")
    print("|---|---|---|---|")
    for entry in ZOO:
        torch._dynamo.reset()
        eager, compiled, sites = run(entry)
        int8 = sum(site.outcome != LEFT_ALONE for site in sites)
        cosine = F.cosine_similarity(eager.double().flatten(), compiled.double().flatten(), dim=0).item()
        forms = sorted({site.form for site in sites if site.outcome != LEFT_ALONE})
        notes = "; ".join(forms) or "; ".join(sorted({site.reason for site in sites}))
        print(f"| {entry.attention} | {int8}/{entry.layers} | {cosine:.6f} | {notes} |")


if __name__ == "__main__":
    main()

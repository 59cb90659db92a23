"""One attention computation found in a graph, described the same way whatever form it was written in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from intfa_compile.sites import SiteRecord, has_provenance, module_path, source_line, stamped_site


@dataclass(frozen=True)
class AttentionSite:
    """softmax(Q·Kᵀ·scale + mask)·V at one place in a graph.

    ``key`` and ``value`` are the un-repeated KV heads when the model repeats them for GQA; a boolean
    ``attn_mask`` is True where a key is kept (SDPA's convention).
    """

    anchor: torch.fx.Node
    """The node whose value is the attention output: the one a rewrite replaces."""
    form: str
    query: torch.fx.Node
    key: torch.fx.Node
    value: torch.fx.Node
    attn_mask: torch.fx.Node | None
    is_causal: bool
    scale: float | None
    dropout_p: float = 0.0
    causal_offset: int = 0
    """With ``is_causal``, query i sees keys j <= i + causal_offset (0 is SDPA's top-left alignment)."""
    window_left: int = -1
    """With ``is_causal`` and >= 0: query i sees no key j < i + causal_offset − window_left (sliding window)."""
    used_for_backward: bool = False
    """Other outputs of the attention (logsumexp, RNG state) are used: a training graph."""
    batch_of_one: bool = False
    """q, k, v are 3-D (B·H, N, D) and run as 4-D with a batch of one."""
    values: tuple[torch.Tensor | None, ...] | None = None
    """Fake (B, H, N, D) values of q, k, v and the mask, where the nodes hold them in another layout (the
    structural matcher's sites, whose nodes are the products' operands)."""

    def _val(self, node: torch.fx.Node | None) -> torch.Tensor | None:
        value = node.meta.get("val") if node is not None else None
        if not isinstance(value, torch.Tensor):
            return None
        return value.unsqueeze(0) if self.batch_of_one and value.dim() == 3 else value

    @property
    def tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Fake values of q, k, v (None where the graph carries none)."""
        if self.values is not None:
            return self.values[0], self.values[1], self.values[2]
        return self._val(self.query), self._val(self.key), self._val(self.value)

    @property
    def mask_tensor(self) -> torch.Tensor | None:
        if self.values is not None and self.attn_mask is not None:
            return self.values[3]
        return self._val(self.attn_mask)

    def record(self, module_paths: Mapping[str, str], outcome: str, reason: str = "") -> SiteRecord:
        """This site's line in the explain table (``module_paths``: the compile's, by traced node name)."""
        q, k, v = self.tensors

        def dims(t: torch.Tensor | None) -> str:
            return "?" if t is None else "×".join(str(s) for s in t.shape)

        mask = self.mask_tensor
        if self.attn_mask is None:
            mask_text = "none"
        elif mask is None:
            mask_text = "?"
        else:
            mask_text = f"{'bool' if mask.dtype == torch.bool else 'additive'} {dims(mask)}"
        gqa = ""
        if q is not None and k is not None and q.dim() == k.dim() and q.dim() >= 3 and q.shape[-3] != k.shape[-3]:
            gqa = f"{q.shape[-3]}/{k.shape[-3]}"
        module, source = module_path(self.anchor, module_paths), source_line(self.anchor)
        inherited = None if has_provenance(self.anchor) else stamped_site(self.query)
        if inherited is not None:  # a node a rewrite made without provenance, at a site an earlier stage named
            module, source, _ = inherited
        return SiteRecord(
            module=module,
            source=source,
            form=self.form + (f", causal offset {self.causal_offset}" if self.causal_offset else "")
            + (f", window {self.window_left}" if self.window_left >= 0 else ""),
            shapes=f"q {dims(q)}, kv {dims(k)}",
            mask=mask_text,
            causal=self.is_causal,
            gqa=gqa,
            outcome=outcome,
            reason=reason,
            node=self.anchor.name,
        )

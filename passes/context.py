"""The state of one compilation: its settings, the module path of each traced node, and what its stages decided.

The backend makes one ``CompileContext`` per graph it compiles and hands it to each pass it installs; the passes
hand it on to whatever they call. Nothing of a compilation lives in module globals, so two compilations (another
model, a recompile under other settings, a nested compile) never see each other's state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch._dynamo.utils import counters

from intfa_compile.config import Settings
from intfa_compile.sites import (
    LEFT_ALONE,
    SiteRecord,
    has_provenance,
    record,
    retract,
    stamp_site,
    stamped_site,
)
from intfa_compile.torch_logs import log_site_graph

from .attention_site import AttentionSite
from .guards import config_skip_reason, cuda_tile_reason, unsupported_reason

log = logging.getLogger("intfa_compile")


class UnsupportedAttentionError(RuntimeError):
    """Raised for an attention site the INT8 rewrite cannot handle when ``fallback="error"``."""


@dataclass
class CompileContext:
    """One compilation of one graph by the ``intfa`` backend.

    Its stages (the structural matcher before Inductor's passes, the SDPA rewrite and the report of what stayed
    after them) share it: each site is reported once, under one stable key, and a later stage's decision on a
    site an earlier one left alone replaces the earlier record (Inductor may have turned hand-written attention
    into SDPA in between)."""

    settings: Settings
    module_paths: Mapping[str, str] = field(default_factory=dict)
    """Module path of each node of the graph Dynamo traced, by node name (``sites.module_paths_of``)."""
    site_keys: dict[str, str] = field(default_factory=dict)
    """Stable key of each site for static scales, by anchor node name: module path and call order
    (``layers.0.self_attn#0``)."""
    reported: set[str] = field(default_factory=set)
    """Anchor node names of the sites a stage has reported (rewritten or left alone)."""
    declined: dict[str, str] = field(default_factory=dict)
    """Why the structural matcher did not take a softmax as attention, by the softmax's node name."""
    left_alone_at: dict[tuple[str, str], tuple[int, SiteRecord]] = field(default_factory=dict)
    """(module, source line) of each site left alone → (stage that said so, its record)."""
    stage: int = 0
    """Which pass run is on (each pass run is a stage)."""
    _decided: dict[torch.fx.Node, bool] = field(default_factory=dict)
    """Decisions of the current stage by anchor node: a site looked at twice gets the same answer."""
    _approved: dict[torch.fx.Node, SiteRecord] = field(default_factory=dict)
    """The record of each site the current stage approved, withdrawn if its rewrite fails."""

    def begin_stage(self) -> None:
        """A pass starts its run over a graph."""
        self.stage += 1
        self._decided, self._approved = {}, {}

    # What the structural matcher declined ------------------------------------------------------------------

    def note_declined(self, node: torch.fx.Node, reason: str) -> None:
        """Keep why the softmax at ``node`` was not taken as attention, for the report of what stayed."""
        self.declined[node.name] = reason

    def declined_reason(self, node: torch.fx.Node) -> str | None:
        return self.declined.get(node.name)

    def already_reported(self, node: torch.fx.Node) -> bool:
        """Whether a stage has reported the site anchored at a node of this name."""
        return node.name in self.reported

    # Site keys and records ------------------------------------------------------------------------------------

    def site_key(self, site: AttentionSite) -> str:
        """The site's stable key: its module path and its order among that module's sites."""
        inherited = None if has_provenance(site.anchor) else stamped_site(site.query)
        if inherited is not None:  # the attention an earlier stage keyed, remade by a rewrite without provenance
            self.site_keys.setdefault(site.anchor.name, inherited[2])
        if site.anchor.name not in self.site_keys:
            module = site.record(self.module_paths, LEFT_ALONE).module
            index = sum(key.rsplit("#", 1)[0] == module for key in self.site_keys.values())
            self.site_keys[site.anchor.name] = f"{module}#{index}"
        return self.site_keys[site.anchor.name]

    def report(self, site_record: SiteRecord, warn: bool = False) -> SiteRecord:
        """Log and collect ``site_record``, first withdrawing the record an earlier stage made for the same place
        when it left the site alone: the later stage saw what became of it."""
        place = (site_record.module, site_record.source)
        earlier = self.left_alone_at.get(place)
        if earlier is not None and earlier[0] != self.stage:
            del self.left_alone_at[place]
            retract(earlier[1])
            counters["intfa"]["left_alone"] -= 1
        if site_record.outcome == LEFT_ALONE:
            self.left_alone_at.setdefault(place, (self.stage, site_record))  # two on one line of a stage: both stand
            counters["intfa"]["left_alone"] += 1
        record(site_record, warn=warn)
        return site_record

    # Decisions ------------------------------------------------------------------------------------------------

    def _remember(self, site: AttentionSite, rewritten: bool) -> None:
        self._decided[site.anchor] = rewritten
        self.reported.add(site.anchor.name)

    def leave_alone(self, site: AttentionSite, reason: str, unsupported: bool = True) -> bool:
        """Record that ``site`` keeps its original attention and why; raises under fallback="error" if
        ``unsupported`` (a limit of the kernel rather than a choice of the settings). Returns False."""
        earlier = self._decided.get(site.anchor)
        if earlier is not None:
            return earlier
        self.site_key(site)
        self._remember(site, False)
        stamp_site(site.query, self.report(site.record(self.module_paths, LEFT_ALONE, reason), warn=unsupported),
                   self.site_key(site))
        if unsupported and self.settings.fallback == "error":
            raise UnsupportedAttentionError(f"attention at {site.record(self.module_paths, LEFT_ALONE).module}: "
                                            f"{reason}")
        return False

    def decide(self, site: AttentionSite) -> bool:
        """Whether to rewrite ``site`` to INT8; records the outcome either way (and raises under
        fallback="error")."""
        earlier = self._decided.get(site.anchor)
        if earlier is not None:
            return earlier
        log.debug("intfa: pass stage %d: attention site %s (node %s) found in form %s, causal %s, mask %s", self.stage,
                  self.site_key(site), site.anchor.name, site.form, site.is_causal, site.attn_mask is not None)
        reason = unsupported_reason(site)
        if reason is not None:
            return self.leave_alone(site, reason)
        reason = cuda_tile_reason(site, self.settings)
        if reason is not None:
            return self.leave_alone(site, reason)
        reason = config_skip_reason(site, self.settings)
        if reason is not None:
            return self.leave_alone(site, reason, unsupported=False)
        self._remember(site, True)
        counters["intfa"][self.settings.pv.counter] += 1
        outcome = self.settings.pv.outcome
        self._approved[site.anchor] = approved = self.report(site.record(self.module_paths, outcome))
        log_site_graph(f"intfa: attention at {approved.module} [{approved.source}], to run {outcome} "
                       f"({site.form}); the graph it replaces:", site.anchor,
                       (site.query, site.key, site.value, site.attn_mask))
        return True

    def rewrite_failed(self, site: AttentionSite, error: Exception) -> None:
        """A rewrite ``decide`` approved raised: the site keeps its original attention, with a warning naming it,
        or the error propagates under fallback="error"."""
        if self.settings.fallback == "error":
            raise error
        counters["intfa"][self.settings.pv.counter] -= 1
        approved = self._approved.pop(site.anchor, None)
        if approved is not None:
            retract(approved)
        self._decided[site.anchor] = False
        stamp_site(site.query, self.report(
            site.record(self.module_paths, LEFT_ALONE, f"the INT8 rewrite failed ({type(error).__name__}: {error}); "
                        "kept as it was"), warn=True), self.site_key(site))

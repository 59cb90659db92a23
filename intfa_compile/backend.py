"""The ``intfa`` torch.compile backend: Inductor with the INT8 attention rewrite in its post-grad passes."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch._inductor.compile_fx import compile_fx

from . import config
from .sites import module_paths_of

if TYPE_CHECKING:
    from intfa_compile.passes.context import CompileContext

log = logging.getLogger("intfa_compile")


def inductor_patches(context: CompileContext, mode: str | None) -> dict[str, Any]:
    """Inductor config patches that run our passes with ``context`` (the structural matcher on the joint graph,
    the SDPA rewrite after grad), chained after any passes the user installed, plus ``mode``'s options."""
    from torch._inductor import config as inductor_config
    from torch._inductor import list_mode_options

    from intfa_compile.passes.custom_passes import ChainedPass, IntfaPostGradPass, IntfaStructuralPass

    patches: dict[str, Any] = {}
    if mode not in (None, "default"):
        patches.update(list_mode_options(mode))
    for slot, ours in (("joint_custom_pre_pass", IntfaStructuralPass(context)),
                       ("post_grad_custom_post_pass", IntfaPostGradPass(context))):
        theirs = getattr(inductor_config, slot)
        patches[slot] = ours if theirs is None else ChainedPass(theirs, ours)
    return patches


def _compile(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], settings: config.Settings,
             mode: str | None) -> Callable[..., Any]:
    """Inductor's compile of ``gm`` with our passes, sharing one context made here for this compilation."""
    from intfa_compile.passes.context import CompileContext

    context = CompileContext(settings, module_paths_of(gm))
    log.debug("intfa: compiling a graph of %d nodes under %s", len(gm.graph.nodes), settings)
    return compile_fx(gm, example_inputs, config_patches=inductor_patches(context, mode))


def _input_signature(args: Sequence[Any]) -> tuple:
    return tuple(
        (tuple(a.shape), tuple(a.stride()), a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in args
    )


RECOMPILES_KEPT = 8
"""Graphs a compiled model keeps for settings changed after it was compiled (per settings and input shapes), the
least recently used dropped first: as many as Dynamo keeps per frame (``torch._dynamo.config.recompile_limit``)."""


class _SettingsAwareCompiled:
    """A compiled graph that notices a later change of ``intfa_compile.config`` and recompiles for it.

    The graph compiled by the backend call serves as long as the settings are those it was built
    under. After a change, the graph is compiled again for the new settings, specialized to the
    shapes of the call that saw the change (a later call of other shapes compiles again).
    """

    def __init__(self, gm: torch.fx.GraphModule, options: dict[str, Any] | None, mode: str | None,
                 settings: config.Settings, compiled: Callable[..., Any]) -> None:
        self._gm, self._options, self._mode = gm, options, mode
        self._settings, self._compiled = settings, compiled
        self._generation = config.generation()
        self._recompiled: collections.OrderedDict[tuple, Callable[..., Any]] = collections.OrderedDict()

    def __call__(self, *args: Any) -> Any:
        if config.generation() == self._generation:
            return self._compiled(*args)
        settings = config.resolve(self._options)
        if settings == self._settings:
            self._generation = config.generation()
            return self._compiled(*args)
        key = (settings, _input_signature(args))
        compiled = self._recompiled.get(key)
        if compiled is None:
            log.info("intfa: config changed since this graph was compiled; recompiling under %s", settings)
            compiled = _compile(self._gm, list(args), settings, self._mode)
            self._recompiled[key] = compiled
            if len(self._recompiled) > RECOMPILES_KEPT:
                self._recompiled.popitem(last=False)
        self._recompiled.move_to_end(key)
        return compiled(*args)


def intfa_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *, mode: str | None = None,
                  options: dict[str, Any] | None = None) -> Callable[..., Any]:
    """Compile ``gm`` with Inductor, running attention as INT8 (``torch.compile(m, backend="intfa")``).

    ``options`` takes the keys of ``intfa_compile.config`` and overrides them for this model;
    an unknown key raises ``ValueError`` naming the valid ones.
    """
    options = dict(options) if options else None
    settings = config.resolve(options)
    compiled = _compile(gm, example_inputs, settings, mode)
    return _SettingsAwareCompiled(gm, options, mode, settings, compiled)

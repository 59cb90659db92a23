"""intfa-compile's names in torch's logging: ``TORCH_LOGS="intfa"`` (``+intfa`` for debug) and the
``intfa_graph`` artifact.

torch validates ``TORCH_LOGS`` while it imports, so the names must exist before then: torch calls ``register``
through the ``torch.backends`` entry point (device-backend autoload, which torch runs before it parses
``TORCH_LOGS`` from version 2.13 on). This is a module of its own, outside the ``intfa_compile`` package, because
importing that package imports torch, which is half-initialized at that point; and ``register`` never raises,
since an error here would stop ``import torch`` for everyone who has intfa-compile installed. ``intfa_compile``
calls it again when imported, so ``torch._logging.set_logs(intfa=...)`` works whatever the torch version.
"""

from __future__ import annotations

LOG_ALIAS = "intfa"
"""The ``TORCH_LOGS`` name of intfa-compile's log: each attention site's decision at INFO, details at DEBUG."""
LOGGER = "intfa_compile"
"""The Python logger everything of intfa-compile logs to (a ``TORCH_LOGS`` name too, as a module)."""
GRAPH_ARTIFACT = "intfa_graph"
"""The ``TORCH_LOGS`` artifact that prints the FX graph around each attention site that is rewritten."""


def register() -> None:
    """Register the log and the artifact with ``torch._logging`` (once; never raises)."""
    try:
        from torch._logging import _internal

        if _internal.log_registry.is_log(LOG_ALIAS):
            return
        _internal.register_log(LOG_ALIAS, LOGGER)
        _internal.register_artifact(GRAPH_ARTIFACT, "The FX graph around each attention site intfa-compile rewrites",
                                    off_by_default=True)
    except Exception:  # noqa: BLE001 - torch's import must not fail because of us
        pass

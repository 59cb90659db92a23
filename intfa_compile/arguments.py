"""Checks of what users hand the public entry points (``prepare``, ``collect``, ``explain``), with errors that name
the argument, raised before anything is compiled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import config


def check_model(model: object, function: str) -> None:
    """``model`` must be something ``torch.compile`` takes: an ``nn.Module`` or another callable."""
    if not callable(model):
        raise TypeError(f"{function}: model must be a torch.nn.Module or a callable, got {type(model).__name__}")


def checked_options(options: object, function: str, reserved: tuple[str, ...] = ()) -> dict[str, Any]:
    """``options`` as a dict of intfa options, checked as ``torch.compile(..., options=...)`` would check them
    (``config.resolve``: names, values and combinations), with the ``reserved`` names that ``function`` sets itself
    refused."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{function}: options must be a dict of intfa options or None, got {type(options).__name__}")
    taken = sorted(name for name in reserved if name in options)
    if taken:
        raise ValueError(f"{function}: options {taken} are set by {function} itself")
    config.resolve(options)
    return dict(options)

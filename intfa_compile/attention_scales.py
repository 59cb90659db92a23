"""``AttentionScales``: the static scales calibration produces, as data (validated, hashed, saved and loaded).

A leaf module (the scales file's format and the observers' names only), so ``config`` can check a ``scales``
value without importing calibration, which imports ``config`` through the public entry points' checks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import InitVar, dataclass
from pathlib import Path

from .observers import OBSERVERS
from .scales_format import FORMAT, check_top_level, validated_observer, validated_sites


@dataclass(frozen=True)
class AttentionScales:
    """Static quantization scales per attention site: Q and K per head, V per head and channel.

    Validated whole when made (``scales_format``): a structure with a missing field, a wrong length or a range
    that is not finite and positive raises ``ValueError`` naming the site and the field."""

    sites: dict[str, dict[str, list]]
    """site key → {"q": [Hq], "k": [Hk], "v": [Hk][D]} as amax values (scale = amax / 127)."""
    observer: str = "minmax"
    source: InitVar[str] = "AttentionScales"
    """Where the ranges come from (a file's path), named in validation errors."""

    def __post_init__(self, source: str) -> None:
        object.__setattr__(self, "sites", validated_sites(self.sites, source))
        validated_observer(self.observer, OBSERVERS, source)

    def fingerprint(self) -> str:
        """A hash of the content: part of the compiled graph's cache key."""
        return hashlib.sha256(json.dumps({"sites": self.sites, "observer": self.observer},
                                         sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write the scales as JSON (portable across machines and devices; the format is ``scales_format``'s)."""
        Path(path).write_text(json.dumps({"format": FORMAT, "observer": self.observer, "sites": self.sites},
                                         indent=1, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> AttentionScales:
        """Read scales written by ``save``. The whole file is checked before anything is kept: text that is not
        JSON (a truncated copy), another format or a newer version of this one, a missing or unknown field, a
        wrong length, a range that is not finite and in [2⁻²⁴, 2⁴⁸] all raise ``ValueError`` naming the file,
        the site and the field."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not an intfa scales file: not UTF-8 text ({error.reason})") from error
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                             "a truncated or hand-edited copy?") from error
        except RecursionError as error:
            raise ValueError(f"{path}: not an intfa scales file: JSON nested too deeply") from error
        data = check_top_level(data, str(path))
        return cls(sites=data["sites"], observer=data.get("observer", "minmax"), source=str(path))

    def __hash__(self) -> int:
        return hash(self.fingerprint())

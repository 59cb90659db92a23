"""The static-scales file: its format, and the validation every way into ``AttentionScales`` goes through.

A scales file is input from outside (another machine, another model version, a hand edit, a truncated copy), so
it is checked whole before anything uses it: a damaged one raises ``ValueError`` naming the file, the site and the
field, and nothing of it is kept. The format (JSON)::

    {"format": "intfa-scales/1", "observer": "minmax",
     "sites": {"<site key>": {"q": [amax per query head],
                              "k": [amax per KV head],
                              "v": [[amax per channel] per KV head]}}}

Each amax is the largest |x| to represent (the scale is amax / 127): Q and K per head, V per head and head-dim
channel. Ranges lie in [``AMAX_FLOOR``, ``AMAX_CEILING``]; query heads are a multiple of KV heads (GQA), and
every V row has the same number of channels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FORMAT_NAME = "intfa-scales"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
"""The ``format`` field this version writes and reads."""

AMAX_FLOOR = 2.0**-24
"""The smallest range: what ``collect`` writes for a head or channel whose observer saw only zeros (2⁻²⁴, fp16's
smallest step, so no 16-bit activation that is not zero lies below it). A zero range would make a zero scale."""

AMAX_CEILING = 2.0**48
"""The largest range. A larger one makes scales whose products (Q's times K's, in fp32, per score) can overflow
to infinity, and 0 · ∞ turns a score into NaN; no activation comes near it."""

FIELDS = ("q", "k", "v")
TOP_LEVEL = ("format", "observer", "sites")


def check_format(value: object, source: str) -> None:
    """Raise unless ``value`` is this version's ``format`` field; a newer version of the format says so."""
    if value == FORMAT:
        return
    match = re.fullmatch(rf"{FORMAT_NAME}/(\d+)", value) if isinstance(value, str) else None
    if match is not None and int(match.group(1)) > FORMAT_VERSION:
        raise ValueError(f"{source}: written in format version {match.group(1)} by a newer intfa-compile; this one "
                         f"reads version {FORMAT_VERSION} ({FORMAT!r}): upgrade intfa-compile to load it")
    raise ValueError(f"{source}: not an intfa scales file: its 'format' field is {value!r}, expected {FORMAT!r}")


def check_top_level(data: object, source: str) -> Mapping[str, Any]:
    """``data`` as the file's top-level object: a JSON object with this version's format and no unknown field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: not an intfa scales file: expected a JSON object, got {type(data).__name__}")
    check_format(data.get("format"), source)
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"{source}: unknown top-level field(s) {unknown}; expected {list(TOP_LEVEL)}")
    if "sites" not in data:
        raise ValueError(f"{source}: the 'sites' field is missing")
    return data


def validated_observer(observer: object, known: Mapping[str, Any], source: str) -> str:
    """``observer`` if it names one of the ``known`` observers."""
    if not isinstance(observer, str) or observer not in known:
        raise ValueError(f"{source}: field 'observer' is {observer!r}; expected one of {sorted(known)}")
    return observer


def validated_sites(sites: object, source: str) -> dict[str, dict[str, list]]:
    """A checked copy of ``sites`` (site key → {"q", "k", "v"}), every range a float, or ``ValueError`` naming
    ``source``, the site and the field at the first problem."""
    if not isinstance(sites, Mapping):
        raise ValueError(f"{source}: field 'sites' must map site keys to their ranges, got {type(sites).__name__}")
    checked = {}
    for site, entry in sites.items():
        if not isinstance(site, str) or not site:
            raise ValueError(f"{source}: site key {site!r} is not a non-empty string")
        checked[site] = _validated_site(entry, f"{source}: site {site!r}")
    return checked


def _validated_site(entry: object, where: str) -> dict[str, list]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected an object with fields {list(FIELDS)}, got {type(entry).__name__}")
    missing = [name for name in FIELDS if name not in entry]
    if missing:
        raise ValueError(f"{where}: field(s) {missing} missing")
    unknown = sorted(str(name) for name in entry if name not in FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected {list(FIELDS)}")
    q = _ranges(entry["q"], f"{where}, field 'q'")
    k = _ranges(entry["k"], f"{where}, field 'k'")
    if len(q) % len(k):
        raise ValueError(f"{where}: {len(q)} query heads in field 'q' are not a multiple of the {len(k)} KV heads "
                         "in field 'k'")
    rows = entry["v"]
    if not isinstance(rows, list) or len(rows) != len(k):
        count = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise ValueError(f"{where}, field 'v': expected a list of {len(k)} rows (one per KV head, as in field 'k'), "
                         f"got {count}")
    v = [_ranges(row, f"{where}, field 'v'[{head}]") for head, row in enumerate(rows)]
    if any(len(row) != len(v[0]) for row in v):
        raise ValueError(f"{where}, field 'v': rows of {sorted({len(row) for row in v})} channels; every KV head has "
                         "the same head dim")
    return {"q": q, "k": k, "v": v}


def _ranges(values: object, where: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: expected a non-empty list of ranges, got {_describe(values)}")
    return [_range(value, f"{where}[{index}]") for index, value in enumerate(values)]


def _range(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {_describe(value)}")
    if not AMAX_FLOOR <= value <= AMAX_CEILING:  # NaN compares False; a huge JSON integer compares exactly
        raise ValueError(f"{where}: range {value!r} is not a finite number in [2**-24, 2**48] (an amax: the largest "
                         "|x| to represent, > 0)")
    return float(value)


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"

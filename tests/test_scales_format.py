"""A static-scales file is input from outside: every damage is refused at load with a ``ValueError`` naming the
file, the site and the field, nothing half-loads, and what does load quantizes to finite output.

The property tests damage valid files at random (removed keys, wrong types, non-finite and non-positive numbers,
wrong lengths, truncated text) and require a clean ``ValueError`` or scales that run: never another exception,
never a non-finite output.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from intfa_compile import AttentionScales
from intfa_compile.calibration import ScalesMismatchError, collect, prepare, static_amax
from intfa_compile.ops import int8_sdpa
from intfa_compile.scales_format import AMAX_CEILING, AMAX_FLOOR, FORMAT

SITE = "layers.0.attn#0"
HEADS_Q, HEADS_K, HEAD_DIM = 4, 2, 8


def _valid_file() -> dict:
    return {"format": FORMAT, "observer": "minmax",
            "sites": {SITE: {"q": [1.5, 2.0, 0.5, 3.0], "k": [1.0, 2.5],
                             "v": [[0.25 * (c + 1) for c in range(HEAD_DIM)] for _ in range(HEADS_K)]},
                      "layers.1.attn#0": {"q": [1.0], "k": [1.0], "v": [[2.0, 2.0]]}}}


def _write(tmp_path, data) -> str:
    path = tmp_path / "scales.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_a_valid_file_round_trips(tmp_path):
    scales = AttentionScales.load(_write(tmp_path, _valid_file()))
    scales.save(tmp_path / "again.json")
    assert AttentionScales.load(tmp_path / "again.json") == scales
    assert all(isinstance(x, float) for x in scales.sites[SITE]["q"])


def _damaged(change) -> dict:
    data = _valid_file()
    change(data)
    return data


def _set(path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(path):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


# (damage, what the message must name)
DAMAGE = [
    (_set(("sites", SITE, "q", 1), float("nan")), f"site '{SITE}', field 'q'[1]"),
    (_set(("sites", SITE, "k", 0), float("inf")), f"site '{SITE}', field 'k'[0]"),
    (_set(("sites", SITE, "v", 1, 3), 0.0), f"site '{SITE}', field 'v'[1][3]"),
    (_set(("sites", SITE, "v", 0, 0), -1.0), f"site '{SITE}', field 'v'[0][0]"),
    (_set(("sites", SITE, "q", 2), 1e300), f"site '{SITE}', field 'q'[2]"),
    (_set(("sites", SITE, "q", 0), "1.0"), f"site '{SITE}', field 'q'[0]: expected a number"),
    (_set(("sites", SITE, "q", 0), True), f"site '{SITE}', field 'q'[0]: expected a number"),
    (_delete(("sites", SITE, "v")), f"site '{SITE}': field(s) ['v'] missing"),
    (_set(("sites", SITE, "v"), [[1.0] * HEAD_DIM]), f"site '{SITE}', field 'v': expected a list of 2 rows"),
    (_set(("sites", SITE, "v", 1), [1.0] * (HEAD_DIM - 1)), f"site '{SITE}', field 'v': rows of [7, 8] channels"),
    (_set(("sites", SITE, "q"), [1.0, 1.0, 1.0]), f"site '{SITE}': 3 query heads"),
    (_set(("sites", SITE, "k"), []), f"site '{SITE}', field 'k': expected a non-empty list"),
    (_set(("sites", SITE, "scale"), [1.0]), f"site '{SITE}': unknown field(s) ['scale']"),
    (_set(("sites", SITE), [1.0]), f"site '{SITE}': expected an object"),
    (_set(("sites",), []), "field 'sites' must map site keys"),
    (_delete(("sites",)), "the 'sites' field is missing"),
    (_set(("format",), "intfa-scales/2"), "format version 2 by a newer intfa-compile"),
    (_set(("format",), "other/1"), "not an intfa scales file"),
    (_set(("observer",), "mystery"), "field 'observer'"),
    (_set(("extra",), 1), "unknown top-level field(s) ['extra']"),
]


@pytest.mark.parametrize(("change", "message"), DAMAGE)
def test_damaged_files_are_refused_naming_file_site_and_field(tmp_path, change, message):
    path = _write(tmp_path, _damaged(change))
    with pytest.raises(ValueError) as raised:
        AttentionScales.load(path)
    assert str(raised.value).startswith(path) and message in str(raised.value)


def test_text_that_is_not_json_is_refused_naming_the_file(tmp_path):
    text = json.dumps(_valid_file())
    for damaged in (text[: len(text) // 2], "", "\x00\xff", "[1, 2"):
        path = _write(tmp_path, damaged)
        with pytest.raises(ValueError, match="not valid JSON|not an intfa scales file"):
            AttentionScales.load(path)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="binary.json: not an intfa scales file: not UTF-8"):
        AttentionScales.load(tmp_path / "binary.json")


def test_the_constructor_validates_like_load():
    sites = _valid_file()["sites"]
    sites[SITE]["k"][1] = 0.0
    with pytest.raises(ValueError, match=r"AttentionScales: site 'layers.0.attn#0', field 'k'\[1\]"):
        AttentionScales(sites=sites)


def test_collect_writes_the_floor_for_a_head_that_saw_only_zeros_and_refuses_non_finite_ranges():
    def attention(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    q[:, 1] = 0.0  # head 1 of Q never sees a non-zero value
    prepared = prepare(attention)
    with torch.no_grad():
        prepared(q, k, v)
    (entry,) = collect(prepared).sites.values()
    assert entry["q"][1] == AMAX_FLOOR and entry["q"][0] > AMAX_FLOOR
    poisoned = prepare(attention)
    k[0, 0, 3, 2] = float("inf")
    with torch.no_grad():
        poisoned(q, k, v)
    with pytest.raises(ValueError, match="field 'k'.*inf or NaN in the calibration batches"):
        collect(poisoned)


def test_scales_that_do_not_fit_raise_under_fallback_error_naming_what_differed():
    scales = AttentionScales(sites=_valid_file()["sites"])
    q, k = torch.zeros(1, HEADS_Q, 5, HEAD_DIM * 2), torch.zeros(1, HEADS_K, 5, HEAD_DIM * 2)
    with pytest.raises(ScalesMismatchError, match=f"{SITE}: head dim: 8 in the scales, 16 at the site"):
        static_amax(scales, SITE, q, k, strict=True)
    with pytest.raises(ScalesMismatchError, match="no entry for this site"):
        static_amax(scales, "elsewhere#0", q, k, strict=True)

    def attention(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    compiled = torch.compile(attention, backend="intfa", options={"scales": scales, "fallback": "error"})
    with pytest.raises(Exception, match="no entry for this site"):
        compiled(k, k, k)


# Property tests ---------------------------------------------------------------------------------------------------

_JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.just([]), st.just({}),
                  st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0, -1.0, -0.0, 1e-30, 1e300,
                                   10**400]),
                  st.lists(st.floats(0.5, 2.0), max_size=3))


def _paths(data, prefix=()):
    """Every place in the JSON structure: (path to the container, key or index)."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return
    for key, value in items:
        yield prefix, key
        yield from _paths(value, (*prefix, key))


@st.composite
def _damaged_texts(draw):
    data = _valid_file()
    places = list(_paths(data))
    for _ in range(draw(st.integers(1, 3))):
        container_path, key = draw(st.sampled_from(places))
        container = data
        try:
            for step in container_path:
                container = container[step]
            kind = draw(st.sampled_from(["remove", "replace", "shorten", "duplicate"]))
            if kind == "remove":
                del container[key]
            elif kind == "replace":
                container[key] = draw(_JUNK)
            elif kind == "shorten" and isinstance(container[key], list) and container[key]:
                container[key].pop()
            elif kind == "duplicate" and isinstance(container[key], list) and container[key]:
                container[key].append(copy.deepcopy(container[key][0]))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier damage removed or replaced this place
    text = json.dumps(data)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _quantized_output_is_finite(scales: AttentionScales) -> None:
    """Use what loaded as the compiled model would: the site's ranges if they fit its shapes (else dynamic
    scales), in the static INT8 attention."""
    for site in (SITE, "layers.1.attn#0"):
        heads_q, heads_k, head_dim = (HEADS_Q, HEADS_K, HEAD_DIM) if site == SITE else (1, 1, 2)
        q = torch.randn(1, heads_q, 6, head_dim) * 3
        k, v = (torch.randn(1, heads_k, 6, head_dim) for _ in range(2))
        entry = static_amax(scales, site, q, k)
        if entry is None:
            continue
        ranges = torch.tensor(entry["q"]), torch.tensor(entry["k"]), torch.tensor(entry["v"])
        out = int8_sdpa(q, k, v, None, False, None, static_amax=ranges)
        assert torch.isfinite(out).all()


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_damaged_texts())
def test_random_damage_ends_in_a_clean_error_or_scales_that_run(tmp_path, text):
    path = _write(tmp_path, text)
    try:
        scales = AttentionScales.load(path)
    except ValueError as error:
        assert str(error).startswith(path)
        event("refused")
        return
    event("loaded")
    for entry in scales.sites.values():  # what loaded is whole and within the documented limits
        ranges = [*entry["q"], *entry["k"], *(x for row in entry["v"] for x in row)]
        assert all(AMAX_FLOOR <= x <= AMAX_CEILING for x in ranges)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging.getLogger("intfa_compile"), "disabled", True)
        _quantized_output_is_finite(scales)

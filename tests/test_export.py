"""Export and AOTInductor: ``torch.export`` a model, compile it ahead of time with ``intfa_compile.inductor_configs``
and load the package in a fresh process (``aoti_load_package``): INT8 attention runs there (the op is counted) and
the output matches eager fp32 (cosine >= 0.999, the bar the model zoo holds every compiled model to). The real
all-MiniLM-L6-v2 (BERT, padding mask) and a LLaMA-shaped model (GQA, causal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import intfa_compile
from intfa_compile.sites import rewritten_sites
from tests.helpers import END_TO_END_COSINE
from tests.model_zoo import SMALL_GQA

ROOT = Path(__file__).resolve().parents[1]


class LastHidden(torch.nn.Module):
    """A Hugging Face model whose output is its last hidden state: a plain tensor out of the package."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            return self.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _minilm() -> tuple[torch.nn.Module, dict]:
    sys.path.insert(0, str(ROOT))
    from examples.minilm_demo import SENTENCES, load_minilm

    model, tokenizer = load_minilm()
    batch = tokenizer(SENTENCES[:4], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    return LastHidden(model), {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _llama() -> tuple[torch.nn.Module, dict]:
    import transformers

    config = transformers.LlamaConfig(**SMALL_GQA)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    return LastHidden(transformers.LlamaModel(config).eval()), {"input_ids": ids}


def _package(build, tmp_path: Path) -> tuple[Path, Path, int]:
    return _package_model(*build(), tmp_path)


def _package_model(model: torch.nn.Module, kwargs: dict, tmp_path: Path, **options) -> tuple[Path, Path, int]:
    """Export ``model``, compile it with AOTInductor under ``options``, save its inputs and eager output; returns
    the package, the saved file and the sites rewritten."""
    with torch.no_grad():
        eager = model(**kwargs)
    exported = torch.export.export(model, (), kwargs=kwargs, strict=False)
    counters.clear()
    package = torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp_path / "model.pt2"),
        inductor_configs=intfa_compile.inductor_configs(exported=exported, **options))
    saved = tmp_path / "io.pt"
    torch.save({"args": (), "kwargs": kwargs, "eager": eager}, saved)
    return Path(package), saved, rewritten_sites(counters["intfa"])


def _load_in_fresh_process(package: Path, saved: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "aoti_load_check.py"), str(package), str(saved)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(("build", "sites"), [(_minilm, 6), (_llama, 2)], ids=["minilm", "llama"])
def test_an_aoti_package_runs_int8_attention_in_a_fresh_process(build, sites, tmp_path):
    package, saved, rewritten = _package(build, tmp_path)
    assert rewritten == sites
    report = _load_in_fresh_process(package, saved)
    assert report["int8_calls"] == sites
    assert report["cosine"] >= END_TO_END_COSINE


@pytest.mark.slow
def test_a_package_loaded_without_intfa_compile_fails_naming_the_operator(tmp_path):
    package, saved, _ = _package(_llama, tmp_path)
    script = "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", script, str(package)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0 and "intfa::int8_attention" in result.stderr


@pytest.mark.slow
def test_calibrated_static_scales_travel_in_the_package(tmp_path):
    """Scales calibrated under torch.compile (``prepare``/``collect``) key the exported program's sites alike, and
    their values are arguments of the package's ``intfa::static_amax`` calls: the fresh process, which never saw
    them, runs INT8 with them."""
    model, kwargs = _minilm()
    prepared = intfa_compile.prepare(model)
    with torch.no_grad():
        prepared(**kwargs)
    package, saved, rewritten = _package_model(model, kwargs, tmp_path, scales=intfa_compile.collect(prepared))
    assert rewritten == 6
    with zipfile.ZipFile(package) as archive:  # the generated code calls the op with the values
        code = "".join(archive.read(name).decode(errors="replace") for name in archive.namelist()
                       if name.endswith((".cpp", ".json")))
    assert code.count("intfa::static_amax") == 2 * 6  # Q's and K's per site; half-INT8 leaves V in 16-bit
    report = _load_in_fresh_process(package, saved)
    assert report["int8_calls"] == 6 and report["cosine"] >= END_TO_END_COSINE


@pytest.mark.parametrize(("options", "message"), [
    ({"calibrate": "session0"}, "calibration runs under torch.compile"),
    ({"pv_fromat": "int8"}, "unknown intfa option"),
])
def test_inductor_configs_refuses_what_a_package_cannot_do(options, message):
    with pytest.raises(ValueError, match=message):
        intfa_compile.inductor_configs(**options)


def test_inductor_configs_installs_the_backends_passes():
    from intfa_compile.passes.custom_passes import IntfaPostGradPass, IntfaStructuralPass

    patches = intfa_compile.inductor_configs(pv_format="int8")
    assert isinstance(patches["joint_custom_pre_pass"], IntfaStructuralPass)
    assert isinstance(patches["post_grad_custom_post_pass"], IntfaPostGradPass)

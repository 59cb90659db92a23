"""The package as users get it: the wheel is built, installed (not editable) into a throwaway environment that
reuses this environment's torch, triton and transformers, and run from outside the checkout
(``installed_wheel_check.py``): the backend found by name, INT8 on SDPA and on a small LLaMA, the TORCH_LOGS
names. Catches files the wheel leaves out (the ``passes``/``kernels`` mapping, the top-level logging module) and
entry points that only an editable install provides."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers import END_TO_END_COSINE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_built_wheel_runs_int8_attention_from_outside_the_checkout(tmp_path):
    # Built from a copy of what the wheel is made of, so the build leaves nothing in the checkout.
    source, dist = tmp_path / "source", tmp_path / "dist"
    for name in ("intfa_compile", "passes", "kernels"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "intfa_compile_torch_logs.py"):
        shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "--wheel-dir", str(dist), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("intfa_compile-*.whl")

    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    env_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    # This environment's packages (torch, triton, transformers) behind the throwaway one's, without their .pth
    # files: the editable install of the checkout stays out.
    (env_site / "reused.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]

    run_env = {**{key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
               "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"}  # the passes run, so their counters count
    result = subprocess.run([str(python), str(ROOT / "tests" / "installed_wheel_check.py"), str(ROOT)],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path, env=run_env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["installed_at"]).is_relative_to(env)
    assert report["sdpa_sites"] == 1 and report["sdpa_cosine"] >= END_TO_END_COSINE
    assert report["model_sites"] == 2 and report["model_cosine"] >= END_TO_END_COSINE
    assert report["torch_logs_registered"]

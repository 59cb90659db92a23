"""The checkout's ``kernels/`` and ``passes/`` folders never hide a package of the same bare name
(``intfa_compile/bare_names.py``): run from the checkout's root, as pytest, ``python -m`` and scripts there are,
``import kernels`` finds the third-party package, or an empty namespace where there is none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, json, sys
name = sys.argv[1]
module = importlib.import_module(name)
try:
    importlib.import_module(f"{name}.int8_flash_attention" if name == "kernels" else f"{name}.rewrite")
    ours = True
except ImportError:
    ours = False
print(json.dumps({"file": getattr(module, "__file__", None), "path": list(getattr(module, "__path__", [])),
                  "marker": getattr(module, "MARKER", None), "our_submodule": ours}))
"""


def _probe(name: str, extra_path: Path | None = None) -> dict:
    """Import ``name`` in a fresh interpreter whose working directory (first on ``sys.path``) is the checkout."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)  # after the working directory, as site-packages would be
    result = subprocess.run([sys.executable, "-c", PROBE, name], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["kernels", "passes"])
def test_a_third_party_package_of_the_same_name_is_found(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("MARKER = 'third party'\n")
    found = _probe(name, tmp_path)
    assert found["marker"] == "third party" and Path(found["file"]).is_relative_to(tmp_path)
    assert not found["our_submodule"]


@pytest.mark.parametrize("name", ["kernels", "passes"])
def test_without_one_the_name_is_an_empty_namespace(tmp_path, name):
    """What transformers' availability check reads as "not installed" (a namespace with no file)."""
    found = _probe(name, tmp_path)  # tmp_path holds nothing of that name
    if found["file"] is not None and not Path(found["file"]).is_relative_to(ROOT / name):
        pytest.skip(f"this environment installs a package named {name!r}: {found['file']}")
    assert found == {"file": None, "path": [], "marker": None, "our_submodule": False}


def test_the_installed_names_are_ours():
    import intfa_compile.kernels
    import intfa_compile.passes

    assert Path(intfa_compile.kernels.__file__).parent == ROOT / "kernels"
    assert Path(intfa_compile.passes.__file__).parent == ROOT / "passes"

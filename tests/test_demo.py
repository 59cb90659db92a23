"""The README's demo, run as a user runs it: real all-MiniLM-L6-v2 weights, every attention in INT8."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import END_TO_END_COSINE

DEMO = Path(__file__).resolve().parents[1] / "examples" / "minilm_demo.py"


def test_minilm_demo_runs_every_attention_in_int8_close_to_eager():
    result = subprocess.run([sys.executable, str(DEMO), "--repeats", "1"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "attention sites running INT8: 6 of 6 layers" in result.stdout
    min_cosine = float(re.search(r"cosine vs eager fp32: min ([0-9.]+)", result.stdout).group(1))
    assert min_cosine >= END_TO_END_COSINE

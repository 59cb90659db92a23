"""tests/stacks.py, the ``make test-compat`` runner: lock headers, a failed install reported without stopping the
other stacks, and ``--discard`` leaving no environment behind (CI's disk holds one CUDA stack at a time)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import stacks


def test_every_lock_names_its_python_and_pins_torch_and_triton() -> None:
    for name in ("dev", "gpu-machine", "newest"):
        stack = stacks.read_stack(name)
        assert stack.python.count(".") == 1 and all(part.isdigit() for part in stack.python.split("."))
        pinned = stacks.pinned_versions(stack.lock)
        assert "torch" in pinned and "triton" in pinned, name


def test_unknown_stack_is_refused_with_the_known_ones() -> None:
    with pytest.raises(SystemExit, match="known stacks: .*gpu-machine"):
        stacks.read_stack("no-such-stack")


def _fake_stack(name: str) -> stacks.Stack:
    return stacks.Stack(name, "3.12", stacks.CONSTRAINTS / "gpu-machine.txt", ())


def test_failed_install_is_reported_and_the_next_stack_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    broken, good = _fake_stack("broken"), _fake_stack("good")
    monkeypatch.setattr(stacks, "read_stack", {"broken": broken, "good": good}.__getitem__)
    monkeypatch.setattr(stacks.Stack, "venv", property(lambda stack: tmp_path / f".venv-{stack.name}"))
    ran = []

    def ensure(stack: stacks.Stack) -> Path:
        stack.venv.mkdir()
        if stack.name == "broken":  # as pip exits when the disk fills mid-install
            raise subprocess.CalledProcessError(1, ["python", "-m", "pip", "install", "-c", "lock", "-e", ".[dev]"])
        return stack.venv / "bin" / "python"

    def suite(stack: stacks.Stack, python: Path, extra: list[str]) -> tuple[int, str, float]:
        ran.append(stack.name)
        return 0, "1 passed in 0.1s", 0.1

    monkeypatch.setattr(stacks, "ensure_environment", ensure)
    monkeypatch.setattr(stacks, "installed_versions", lambda python: {"torch": "2.11.0"})
    monkeypatch.setattr(stacks, "run_suite", suite)
    monkeypatch.setattr(stacks, "python_version", lambda python: "3.12.1")

    assert stacks.main(["--discard", "broken", "good"]) == 1
    out = capsys.readouterr().out
    assert ran == ["good"]
    assert "| broken | Python 3.12 | FAILED: install failed" in out and "GB free" in out
    assert "| good | " in out and "ok: 1 passed" in out
    assert not broken.venv.exists() and not good.venv.exists()


def test_environments_are_kept_without_discard(tmp_path: Path, monkeypatch) -> None:
    stack = _fake_stack("kept")
    monkeypatch.setattr(stacks, "read_stack", lambda name: stack)
    monkeypatch.setattr(stacks.Stack, "venv", property(lambda self: tmp_path / ".venv-kept"))

    def ensure(stack: stacks.Stack) -> Path:
        stack.venv.mkdir(exist_ok=True)
        return stack.venv / "bin" / "python"

    monkeypatch.setattr(stacks, "ensure_environment", ensure)
    monkeypatch.setattr(stacks, "installed_versions", lambda python: {})
    monkeypatch.setattr(stacks, "run_suite", lambda stack, python, extra: (0, "1 passed in 0.1s", 0.1))
    monkeypatch.setattr(stacks, "python_version", lambda python: "3.12.1")
    assert stacks.main(["kept"]) == 0
    assert stack.venv.is_dir()


def test_every_stack_runs_the_suite_with_make_tests_workers() -> None:
    """``make test`` and each stack's suite run on the same pytest-xdist workers, which every lock pins (without
    the plugin ``-n`` is an unknown option)."""
    makefile = (stacks.ROOT / "Makefile").read_text()
    workers = next(line.split(":=", 1)[1].split() for line in makefile.splitlines()
                   if line.startswith("TEST_WORKERS :="))
    assert tuple(workers) == stacks.PYTEST_WORKERS
    assert "$(PY) -m pytest -q $(TEST_WORKERS)" in makefile
    for name in ("dev", "gpu-machine", "newest"):
        assert "pytest-xdist" in stacks.pinned_versions(stacks.read_stack(name).lock), name


def test_every_stack_runs_the_whole_suite() -> None:
    """``make test-compat`` runs the suite ``make test`` runs: no lock leaves a test out (on 2 cores with one
    pytest-xdist worker per core, .ci/run takes about half an hour with all three stacks)."""
    for name in ("dev", "gpu-machine", "newest"):
        assert stacks.read_stack(name).pytest_args == (), name

"""Run the test suite under other pinned stacks, each in its own virtual environment (``make test-compat``), or
under today's newest releases unpinned (``make check-latest``).

A stack is a lock file ``constraints/<name>.txt``: the ``pip freeze`` of an environment the suite passed in,
whose header names the Python it needs (``# python: 3.12``) and, optionally, what pytest runs there
(``# pytest: -m "not slow"``). The environment lives in ``.venv-<name>`` and is rebuilt when the lock file or
``pyproject.toml`` changes. Standard library only: it runs before any environment exists.

    python -m tests.stacks gpu-machine newest     # make test-compat
    python -m tests.stacks --latest               # make check-latest: resolve the newest, name what moved
    python -m tests.stacks gpu-machine -- tests/test_export.py -x   # after --: passed on to pytest
    python -m tests.stacks --discard gpu-machine newest   # CI: each environment removed once its suite ran

Each environment holds a CUDA build of torch (5-6 GB with its NVIDIA libraries), so ``--discard`` keeps the peak
at one stack's environment; a stack whose install fails is reported, its partial environment removed, and the
next stack still runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints"
STACK_DISK_GB = 8.0
"""Free disk a stack's install needs: its environment (5.3 GB for gpu-machine, 6.0 GB for newest, measured
2026-12-05) plus the wheels pip holds while installing."""
PYTEST_WORKERS = ("-n", "auto", "--maxprocesses=8")
"""pytest-xdist's workers for each stack's suite, as the Makefile's ``TEST_WORKERS`` for ``make test``: one per core,
at most 8."""
SHOWN = ("torch", "triton", "transformers", "numpy", "hypothesis", "pytest")
"""The versions printed for each stack."""


@dataclass(frozen=True)
class Stack:
    """One pinned environment the suite runs in."""

    name: str
    python: str
    """The Python minor version it needs (``3.12``)."""
    lock: Path | None
    """Its ``pip freeze``; None for the unpinned ``latest``."""
    pytest_args: tuple[str, ...]
    """What pytest runs there (empty: the whole suite, as ``make test``)."""

    @property
    def venv(self) -> Path:
        return ROOT / f".venv-{self.name}"


def read_stack(name: str) -> Stack:
    """The stack ``constraints/<name>.txt`` describes (``python`` and ``pytest`` header lines)."""
    lock = CONSTRAINTS / f"{name}.txt"
    if not lock.is_file():
        known = sorted(path.stem for path in CONSTRAINTS.glob("*.txt"))
        raise SystemExit(f"stacks: no lock file {lock.relative_to(ROOT)} (known stacks: {', '.join(known)})")
    header = dict(re.findall(r"^# (python|pytest): (.*)$", lock.read_text(), flags=re.MULTILINE))
    if "python" not in header:
        raise SystemExit(f"stacks: {lock.relative_to(ROOT)} has no '# python: X.Y' line")
    return Stack(name, header["python"].strip(), lock, tuple(shlex.split(header.get("pytest", ""))))


def find_python(version: str) -> str:
    """An interpreter of Python ``version`` that runs: pyenv's newest ``X.Y.*``, else ``pythonX.Y`` on PATH (a
    pyenv shim there fails unless that version is selected, so each candidate is asked its version)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"),
                        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parts[-3])], reverse=True)
    on_path = shutil.which(f"python{version}")
    for candidate in [*map(str, candidates), *([on_path] if on_path else [])]:
        answer = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                capture_output=True, text=True)
        if answer.returncode == 0 and answer.stdout.strip() == version:
            return candidate
    raise SystemExit(f"stacks: no working Python {version} (looked in {pyenv_root}/versions/{version}.* and for "
                     f"python{version} on PATH); install it to run this stack")


def pip_environment() -> dict[str, str]:
    """pip's environment for a stack's install: no configuration files, so a machine-wide cap (such as one that
    holds torch below a release a stack pins) does not change what the lock file says."""
    return {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_CACHE_DIR": "1"}  # a cached copy of each CUDA wheel would double what a stack costs on disk


def free_disk_gb(path: Path) -> float:
    """Free space, in GB, on the file system holding ``path``."""
    return shutil.disk_usage(path).free / 1e9


def _stamp(stack: Stack) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    if stack.lock is not None:
        digest.update(stack.lock.read_bytes())
    return digest.hexdigest()


def ensure_environment(stack: Stack) -> Path:
    """``stack``'s virtual environment with the project installed (editable, with the dev extra, as ``make
    setup`` does), built or rebuilt when its inputs changed. Returns its Python."""
    python = stack.venv / "bin" / "python"
    stamp = stack.venv / ".stack-installed"
    if stamp.is_file() and stamp.read_text() == _stamp(stack) and python.exists():
        return python
    shutil.rmtree(stack.venv, ignore_errors=True)
    if free_disk_gb(ROOT) < STACK_DISK_GB:
        print(f"stacks: warning: {free_disk_gb(ROOT):.1f} GB free on {ROOT}'s disk; a stack's install needs about "
              f"{STACK_DISK_GB:.0f} GB", flush=True)
    subprocess.run([find_python(stack.python), "-m", "venv", str(stack.venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    env = pip_environment()
    subprocess.run([*pip, "--upgrade", "pip"], check=True, env=env)
    if stack.lock is not None:
        subprocess.run([*pip, "-c", str(stack.lock), "-e", f"{ROOT}[dev]"], check=True, env=env, cwd=ROOT)
    else:  # latest: the newest torch and what it requires, then the project with the newest of the rest
        subprocess.run([*pip, "--upgrade", "torch", "triton"], check=True, env=env)
        subprocess.run([*pip, "--upgrade", "--upgrade-strategy", "eager", "-e", f"{ROOT}[dev]"], check=True, env=env,
                       cwd=ROOT)
    stamp.write_text(_stamp(stack))
    return python


def installed_versions(python: Path) -> dict[str, str]:
    """Every distribution in the environment, by lower-case name, with its version."""
    listing = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                             text=True, check=True, env=pip_environment()).stdout
    return {name.lower().replace("_", "-"): version
            for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", listing, flags=re.MULTILINE)}


def python_version(python: Path) -> str:
    """The full version of the environment's Python (``3.12.1``)."""
    return subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def pinned_versions(lock: Path) -> dict[str, str]:
    """The ``name==version`` lines of a lock file."""
    return {name.lower().replace("_", "-"): version
            for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock.read_text(), flags=re.MULTILINE)}


def run_suite(stack: Stack, python: Path, extra: list[str]) -> tuple[int, str, float]:
    """pytest in ``stack``'s environment from the checkout's root, as ``make test`` runs it. Returns (exit
    status, pytest's summary line, seconds)."""
    start = time.monotonic()
    durations = "--durations=15"  # where CI time goes
    command = [str(python), "-m", "pytest", "-q", *PYTEST_WORKERS, durations, *stack.pytest_args, *extra]
    print(f"$ {shlex.join(command)}", flush=True)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    summary = ""
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        if re.search(r"\b(passed|failed|error|errors|no tests ran)\b.* in [\d.]+s", line):
            summary = line.strip().strip("=").strip()
    return process.wait(), summary, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stacks", nargs="*", help="lock files under constraints/ to run (by name)")
    parser.add_argument("--discard", action="store_true",
                        help="remove each stack's environment once its suite ran (CI: one stack on disk at a time)")
    parser.add_argument("--latest", action="store_true",
                        help="resolve today's newest releases (no lock), run the suite and name what moved "
                             "against constraints/newest.txt")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # after --: passed on to pytest
    options = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    stacks = [read_stack(name) for name in options.stacks]
    if options.latest:
        newest = read_stack("newest")
        stacks.append(Stack("latest", newest.python, None, newest.pytest_args))
    if not stacks:
        parser.error("name at least one stack, or --latest")

    results = []
    for stack in stacks:
        print(f"\n=== stack {stack.name}: Python {stack.python}, "
              f"{stack.lock.relative_to(ROOT) if stack.lock else 'newest releases, unpinned'}", flush=True)
        try:
            python = ensure_environment(stack)
        except subprocess.CalledProcessError as error:
            shutil.rmtree(stack.venv, ignore_errors=True)
            reason = f"install failed ({shlex.join(map(str, error.cmd[-4:]))} exited {error.returncode}; " \
                     f"{free_disk_gb(ROOT):.1f} GB free)"
            print(f"stacks: {stack.name}: {reason}", flush=True)
            results.append((stack.name, f"Python {stack.python}", 1, reason, 0.0))
            continue
        versions = installed_versions(python)
        shown = f"Python {python_version(python)}, " + ", ".join(f"{name} {versions.get(name, '-')}" for name in SHOWN)
        print(shown, flush=True)
        if stack.lock is None:
            pinned = pinned_versions(CONSTRAINTS / "newest.txt")
            moved = {name: (pinned.get(name, "-"), version) for name, version in versions.items()
                     if pinned.get(name) != version}
            print("moved since constraints/newest.txt: " + (", ".join(f"{name} {old} -> {new}" for name, (old, new)
                                                                     in sorted(moved.items())) or "nothing"))
        status, summary, seconds = run_suite(stack, python, extra)
        results.append((stack.name, shown, status, summary or f"pytest exited {status}", seconds))
        if options.discard:
            shutil.rmtree(stack.venv, ignore_errors=True)

    print("\n| stack | versions | pytest | time |\n|---|---|---|---|")
    for name, shown, status, summary, seconds in results:
        print(f"| {name} | {shown} | {'ok' if status == 0 else 'FAILED'}: {summary} | {seconds / 60:.1f} min |")
    return 0 if all(status == 0 for _, _, status, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())

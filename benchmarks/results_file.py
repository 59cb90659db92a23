"""What every benchmark results file starts with and where it goes: device, versions, date, command."""

from __future__ import annotations

import datetime
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton


def cpu_description() -> str:
    """The CPU's model and its bf16 matrix instructions, which decide how eager bf16 GEMMs round on a CPU (so eager
    bf16's numbers differ between machines with and without them); from /proc/cpuinfo where there is one."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    bf16 = [name for name in ("amx_bf16", "avx512_bf16") if name in flags]
    return f"{model}; bf16 instructions: {', '.join(bf16) or 'none'} ({torch.get_num_threads()} threads)"


def command_line() -> str:
    """How this process was started, as a user would type it: ``python -m benchmarks.<name> <arguments>``."""
    return " ".join(["python", *sys.orig_argv[1:]])


@dataclass(frozen=True)
class RunInfo:
    """The machine and software one benchmark run measured, for its results file."""

    device: str
    device_name: str = field(init=False)
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())

    def __post_init__(self) -> None:
        name = torch.cuda.get_device_name() if self.device == "cuda" else f"cpu-{platform.machine()}"
        object.__setattr__(self, "device_name", name)

    def header(self, title: str, dtype: str, *details: str) -> list[str]:
        """Markdown lines: the title, device and versions, the command that produced the file, then ``details``."""
        return [
            f"# {title} — {self.device_name}, {self.date}",
            "",
            f"- device: {self.device_name}; torch {torch.__version__}; triton {triton.__version__}; "
            f"python {platform.python_version()}; dtype {dtype}",
            f"- command: `{command_line()}`",
            *([f"- cpu: {cpu_description()}"] if self.device != "cuda" else []),
            *(f"- {line}" for line in details),
        ]

    def write(self, out: Path, prefix: str, text: str, smoke: bool) -> Path:
        """Write ``<out>/<prefix><device>-<date>[-smoke].md`` and return its path (the stem names the plot too)."""
        out.mkdir(parents=True, exist_ok=True)
        device = self.device_name.replace(" ", "_").replace("/", "_")
        stem = f"{prefix}{device}-{self.date}" + ("-smoke" if smoke else "")
        path = out / f"{stem}.md"
        path.write_text(text)
        return path

"""The machine a benchmark ran on, read once from ``lscpu``: every figure is recorded beside it (CPUs vary
between AVX2-only and AVX-512 BF16 here, and the kernels torch and llama.cpp pick follow the flags)."""

from __future__ import annotations

import subprocess


def lscpu() -> tuple[str, set[str]]:
    """(lscpu's model name or "unknown", its CPU flags); ("unknown", set()) where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), []))
    return model, flags

"""Shared helpers of the benchmark scripts: threads, machine description, timing, tables, JSON results.

Every script in ``benchmarks/`` measures lossatlas against a peer tool *in the same process*, prints a
markdown table with the machine it ran on, and writes ``benchmarks/results/<name>.json``. Timings are
best-of-N wall-clock seconds: on a shared machine the minimum is the least disturbed run.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def set_threads(threads: int | None = None) -> int:
    """``torch.set_num_threads`` for every tool in the run: ``threads`` or all cores this process may use."""
    n = threads or usable_cores()
    torch.set_num_threads(n)
    return n


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """fp32 ``torch.mm`` of two n×n matrices, best of ``repeats``, in GFLOP/s (2·n³ flops per product)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm-up: thread pool, MKL/oneDNN dispatch
    best, _ = best_of(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / best / 1e9


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI, %), else None.

    Near 0 on a quiet machine; other jobs on the same cores push it up and make timings noisy.
    """
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(item.split("=") for item in first.split()[1:])["avg10"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def machine_info(threads: int, peers: Sequence[str] = ()) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, torch threads, versions, fp32 matmul GFLOP/s, load."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "lossatlas": package_version("lossatlas"),
        **{peer: package_version(peer) for peer in peers},
        "fp32_matmul_gflops": round(matmul_gflops(), 1),
        "load_average_1m_at_start": round(load[0], 2),
        "cpu_pressure_at_start": cpu_pressure(),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One markdown line describing the machine of a run."""
    peers = ", ".join(f"{k} {v}" for k, v in info.items() if k not in _CORE_KEYS and v is not None)
    return (f"**Machine:** {info['cpu']}, {info['cores']} cores, torch {info['torch']} with "
            f"{info['torch_threads']} threads, Python {info['python']}, {info['platform']}; fp32 matmul "
            f"(2048×2048 `torch.mm`, best of 10) **{info['fp32_matmul_gflops']} GFLOP/s**; load average "
            f"{info['load_average_1m_at_start']} at start"
            + ("" if info.get("cpu_pressure_at_start") is None
               else f" (CPU pressure {info['cpu_pressure_at_start']:.0f} %)")
            + (f"; {peers}" if peers else "") + ".")


_CORE_KEYS = {"cpu", "cores", "torch_threads", "torch", "python", "platform", "fp32_matmul_gflops",
              "load_average_1m_at_start", "cpu_pressure_at_start"}


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Run ``fn`` ``repeats`` times; returns (best wall-clock seconds, all of them)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall-clock seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` (created if needed) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path

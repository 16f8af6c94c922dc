"""Measurement helpers shared by the benchmark scripts: peak memory, the machine's GEMM peak, reporting."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or what platform knows)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class PeakRSS:
    """Samples this process's resident memory every half millisecond; ``peak_mb`` is the growth of the
    peak over the resident memory at entry (ru_maxrss cannot tell a run's peak from an earlier one)."""

    def __enter__(self) -> PeakRSS:
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self.baseline = self._resident()
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _resident(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._resident())
            time.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._resident())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def peak_mb(fn: Callable[[], object], cuda: bool) -> float:
    """Memory one call of ``fn`` needs beyond what was allocated before: the CUDA allocator's peak on the
    GPU, the growth of resident memory (``PeakRSS``) on the CPU."""
    if not cuda:
        with PeakRSS() as memory:
            fn()
        return memory.peak_mb
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - baseline) / 2**20


def matmul_peak_gflops(threads: int, device: str = "cpu", dtype: str = "float32") -> float:
    """Best of six square GEMMs in GFLOP/s (2048^3 on CPU, 8192^3 on CUDA, random data): the bound the
    matmul-share columns divide by."""
    import torch

    torch.set_num_threads(threads)
    size = 8192 if device == "cuda" else 2048
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, getattr(torch, dtype)) for _ in range(2))
    best = float("inf")
    for _ in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def write_outputs(table: str, markdown_out: str | None, json_out: str | None, payload: object) -> None:
    """Print the markdown table and write it (and the raw rows as JSON) where asked."""
    print(table)
    if markdown_out:
        with open(markdown_out, "w") as handle:
            handle.write(table + "\n")
    if json_out:
        with open(json_out, "w") as handle:
            json.dump(payload, handle, indent=1)

"""What a worker's status record says about its machine: CPU, memory and, when known, its GPUs.

Sampled once per heartbeat on the worker's event loop, so every probe here is cheap: ``os.times``
and ``/proc`` for the process, NVML (``pynvml``, from the ``nvidia-ml-py`` package) for GPUs when it
is installed, else what an already imported PyTorch knows. Nothing is imported or started just to
look: a worker without a GPU library reports ``gpus: []``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

#: pynvml is asked once; None when it is missing or finds no driver.
_nvml: Any = False


class Machine:
    """Samples this process's CPU share since the previous sample, and the machine's GPUs."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), _cpu_seconds())

    def sample(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), _cpu_seconds()
        t0, c0 = self._last
        self._last = (now, cpu)
        share = 100.0 * (cpu - c0) / (now - t0) if now > t0 else 0.0
        return {"cpu": {"count": os.cpu_count() or 1, "percent": round(share, 1),
                        "load": round(os.getloadavg()[0], 2)},
                "memory_mb": _rss_mb(), "gpus": gpus()}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def gpus() -> list[dict[str, Any]]:
    """Each GPU: name, utilisation (%) and memory (MiB), from NVML or an imported PyTorch; [] if unknown."""
    nvml = _nvml_module()
    if nvml is not None:
        try:
            out = []
            for i in range(nvml.nvmlDeviceGetCount()):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                mem, util = nvml.nvmlDeviceGetMemoryInfo(h), nvml.nvmlDeviceGetUtilizationRates(h)
                name = nvml.nvmlDeviceGetName(h)
                out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                            "percent": util.gpu, "memory_used_mb": round(mem.used / 2**20),
                            "memory_total_mb": round(mem.total / 2**20), "source": "nvml"})
            return out
        except Exception:  # noqa: BLE001 - a driver hiccup must not break the heartbeat
            return []
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return []
        return [{"index": i, "name": torch.cuda.get_device_name(i), "percent": None,
                 "memory_used_mb": round(torch.cuda.memory_reserved(i) / 2**20),
                 "memory_total_mb": round(torch.cuda.get_device_properties(i).total_memory / 2**20),
                 "source": "torch"} for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


def _nvml_module() -> Any:
    global _nvml
    if _nvml is False:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        except Exception:  # noqa: BLE001 - not installed, or no NVIDIA driver
            _nvml = None
    return _nvml

"""The GPU's clocks, temperature and clock-event reasons through NVML, read around each recording.

Read only: nothing here sets clocks, power limits or persistence (a tuning tool must measure the GPU as it
serves). ``nvidia-ml-py`` (module ``pynvml``) is on GPU images; where it is missing or NVML fails, the
measurement says so in one detail instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# nvmlClocksEventReasons bits (nvml.h); GpuIdle is left out: it is set between recordings, not during them.
_REASONS = {0x2: "app_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost",
            0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake", 0x100: "display_clock"}

# The reasons that slow the clock under load (power and thermal capping); app_clocks, sync_boost and display_clock
# say nothing about load.
CLOCK_EVENT_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


@dataclass(frozen=True)
class ClockReading:
    sm_mhz: int
    mem_mhz: int
    temp_c: int
    reasons: int  # bitmask of nvmlClocksEventReasons


def reasons_text(mask: int) -> str:
    names = [name for bit, name in _REASONS.items() if mask & bit]
    return ",".join(names) if names else "none"


def _span(values: Sequence[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def clock_details(readings: Sequence[ClockReading]) -> dict[str, str]:
    """Readings taken around one recording -> measurement details (``sm_clock_mhz: 1755-1980`` when it moved)."""
    if not readings:
        return {}
    mask = 0
    for r in readings:
        mask |= r.reasons
    return {"sm_clock_mhz": _span([r.sm_mhz for r in readings]),
            "mem_clock_mhz": _span([r.mem_mhz for r in readings]),
            "gpu_temp_c": _span([r.temp_c for r in readings]), "clock_events": reasons_text(mask)}


def nvml_index(cuda_index: int, visible: str | None = None) -> int:
    """The NVML index of CUDA device ``cuda_index`` when CUDA_VISIBLE_DEVICES lists plain indices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible:
        items = [v.strip() for v in visible.split(",") if v.strip()]
        if cuda_index < len(items) and items[cuda_index].isdigit():
            return int(items[cuda_index])
    return cuda_index


class Clocks:
    """Reads one GPU's clocks; ``read()`` returns None once NVML has failed (``problem`` says why)."""

    def __init__(self, pci_bus_id: str | None, cuda_index: int, nvml: Any = None) -> None:
        self.problem = ""
        self._nvml = nvml
        self._handle = None
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            if pci_bus_id:
                self._handle = self._nvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id)
            else:
                self._handle = self._nvml.nvmlDeviceGetHandleByIndex(nvml_index(cuda_index))
        except Exception as exc:  # noqa: BLE001 - no NVML is a detail, never a failed measurement
            self.problem = f"nvml unavailable: {type(exc).__name__}: {exc}"[:120]

    def read(self) -> ClockReading | None:
        if self._handle is None:
            return None
        n = self._nvml
        try:
            reasons_fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                n.nvmlDeviceGetCurrentClocksThrottleReasons
            return ClockReading(int(n.nvmlDeviceGetClockInfo(self._handle, n.NVML_CLOCK_SM)),
                                int(n.nvmlDeviceGetClockInfo(self._handle, n.NVML_CLOCK_MEM)),
                                int(n.nvmlDeviceGetTemperature(self._handle, n.NVML_TEMPERATURE_GPU)),
                                int(reasons_fn(self._handle)))
        except Exception as exc:  # noqa: BLE001
            self.problem = f"nvml read failed: {type(exc).__name__}: {exc}"[:120]
            self._handle = None
            return None

    def details(self, readings: Sequence[ClockReading | None]) -> dict[str, str]:
        got = [r for r in readings if r is not None]
        if not got:
            return {"nvml": self.problem or "no reading"}
        return clock_details(got)

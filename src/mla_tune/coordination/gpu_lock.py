"""One measuring process per GPU: an exclusive lock file per GPU, so a second worker on a busy GPU is refused.

Two processes timing kernels on one GPU corrupt each other's timings, and nothing fails loudly. Each GPU gets a
lock file (``$MLA_TUNE_LOCK_DIR``, default the system temp dir) held with ``flock`` by the launcher and inherited
by the worker it starts, so the lock lives exactly as long as either process does; the kernel releases it when
both are gone, even after SIGKILL. The file holds the PID of the process measuring there, for the message.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import env
from ..errors import RunnerUnavailableError, UsageError

LOCK_DIR_ENV = env.LOCK_DIR


class GpuBusyError(RunnerUnavailableError):
    """Another mla-tune worker holds this GPU."""


@dataclass
class GpuLock:
    gpu: str  # as given (an index of this process's visible GPUs, or a UUID)
    device: str  # what CUDA_VISIBLE_DEVICES gets in the worker
    path: Path
    fd: int

    def note_holder(self, pid: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the worker's inherited copy keeps the lock until it exits
            self.fd = -1


def parse_gpus(text: str) -> list[str]:
    """``"0,1,3"`` (or GPU UUIDs) -> ids; no empty or repeated ids."""
    ids = [g.strip() for g in text.split(",")]
    if not text.strip() or any(not g for g in ids):
        raise UsageError(f"--gpus takes a comma-separated list of GPU ids, e.g. 0,1,2,3; got {text!r}")
    bad = [g for g in ids if not re.fullmatch(r"\d+|(GPU|MIG)-[0-9A-Za-z-/]+", g)]
    if bad:
        raise UsageError(f"--gpus: {bad[0]!r} is not a GPU index or UUID", hint="e.g. --gpus 0,1")
    dup = sorted({g for g in ids if ids.count(g) > 1})
    if dup:
        raise UsageError(f"--gpus lists GPU {dup[0]} twice: two workers on one GPU corrupt each other's timings")
    return ids


def device_of(gpu: str) -> str:
    """The id to give a worker's CUDA_VISIBLE_DEVICES: indices count within this process's visible GPUs."""
    visible = env.cuda_visible_devices()
    if gpu.isdigit() and visible:
        if int(gpu) >= len(visible):
            raise UsageError(f"--gpus {gpu}: only {len(visible)} GPUs are visible (CUDA_VISIBLE_DEVICES="
                             f"{','.join(visible)})")
        return visible[int(gpu)]
    return gpu


def _uuid_of(device: str) -> str:
    """The GPU's UUID when nvidia-smi can tell (so index 0 and its UUID share one lock), else the id itself."""
    if not device.isdigit() or shutil.which("nvidia-smi") is None:
        return device
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"], check=True,
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return device
    for line in out.splitlines():
        index, _, uuid = (x.strip() for x in line.partition(","))
        if index == device and uuid:
            return uuid
    return device


def lock_dir() -> Path:
    return env.lock_dir()


def acquire(gpu: str) -> GpuLock:
    """Lock ``gpu`` for this process (and the worker that inherits the lock), or raise ``GpuBusyError``."""
    device = device_of(gpu)
    path = lock_dir() / f"mla-tune-gpu-{re.sub(r'[^0-9A-Za-z-]', '_', _uuid_of(device))}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        raise UsageError(f"cannot create the GPU lock file {path}: {e.strerror}",
                         hint=f"set {LOCK_DIR_ENV} to a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise GpuBusyError(f"GPU {gpu} is busy: mla-tune process {holder} is measuring on it ({path})",
                           hint="wait for it to finish, or pick other --gpus") from None
    lock = GpuLock(gpu, device, path, fd)
    lock.note_holder(os.getpid())
    return lock


def acquire_all(gpus: list[str]) -> list[GpuLock]:
    """All or nothing: a busy GPU releases the ones already taken."""
    locks: list[GpuLock] = []
    try:
        for g in gpus:
            locks.append(acquire(g))
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


__all__ = ["GpuLock", "GpuBusyError", "parse_gpus", "acquire", "acquire_all", "LOCK_DIR_ENV"]

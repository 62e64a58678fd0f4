"""The processes of a ``bench-serve``: a ``vllm serve`` per variant and repeat, ``vllm bench serve`` per load.

A server runs in its own process group with its output in a log file, is up when ``/health`` answers, and is
stopped (SIGTERM to the group, then SIGKILL) whatever happens to the bench. Every failure is one line naming what
failed and the log line that says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MlaTuneError, UsageError, one_line
from .plan import HOST, Variant

STOP_TIMEOUT_S = 60.0


class BenchError(MlaTuneError):
    """A server that does not come up, a client that fails, a variant whose run cannot stand for it."""


def check_port_free(port: int) -> None:
    """Refuse a port something already listens on: the client would measure that server instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as servers bind: a port left in TIME_WAIT by the last server is free, one something listens on is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            raise UsageError(f"port {port} on {HOST} is taken (another server?)",
                             hint="stop it, or give bench-serve another --port") from None


def last_words(path: Path, limit: int = 300) -> str:
    """The line of a log that best says why a process stopped: the last one naming an error, else the last."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    if not lines:
        return "(no output)"
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln.lower()]
    return one_line((errors or lines)[-1], limit)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    def log_lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self) -> None:
        """SIGTERM to the server's process group, then SIGKILL to whatever is left of it: engine processes that
        ignore SIGTERM or outlived a crash of the server would keep the GPU's memory and the port from the next
        server. Returns once no process of the group is left (or after a last 10 s)."""
        group = self.proc.pid  # the server leads its own session and process group
        if self.proc.poll() is None:
            _signal_group(group, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _signal_group(group, 0) and time.monotonic() < deadline:
            time.sleep(0.05)


def _signal_group(group: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when no process of it is left."""
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# Straight to the server: an HTTP proxy of the environment would answer for it, or never.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(port: int) -> bool:
    try:
        with _DIRECT.open(f"http://{HOST}:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def server(cmd: Sequence[str], env: Mapping[str, str], log: Path, port: int, timeout_s: float,
           waiting: Callable[[float], None] | None = None, poll_s: float = 0.5) -> Iterator[Server]:
    """A running ``vllm serve`` (up: ``/health`` answers), stopped when the block ends however it ends."""
    check_port_free(port)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        try:
            proc = subprocess.Popen(list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise _not_runnable(cmd[0], e) from None
    srv = Server(proc, log, port)
    try:
        t0 = time.monotonic()
        while not _healthy(port):
            if proc.poll() is not None:
                raise BenchError(f"vllm serve exited with status {proc.returncode} before it was up: "
                                 f"{last_words(log)} (log: {log})")
            waited = time.monotonic() - t0
            if waited > timeout_s:
                raise BenchError(f"vllm serve was not up after {timeout_s:g} s: {last_words(log)} (log: {log})",
                                 hint="raise --server-timeout if it was still loading")
            if waiting is not None:
                waiting(waited)
            time.sleep(poll_s)
        yield srv
    finally:
        srv.stop()


def run_client(cmd: Sequence[str], env: Mapping[str, str], log: Path, timeout_s: float) -> None:
    """Run ``vllm bench serve`` to its end; a non-zero exit or a timeout is one line with its last words."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        try:
            proc = subprocess.run(list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s, check=False)
        except OSError as e:
            raise _not_runnable(cmd[0], e) from None
        except subprocess.TimeoutExpired:
            raise BenchError(f"vllm bench serve did not finish in {timeout_s:g} s: {last_words(log)} (log: {log})",
                             hint="raise --client-timeout, or lower --waves") from None
    if proc.returncode != 0:
        raise BenchError(f"vllm bench serve failed with status {proc.returncode}: {last_words(log)} (log: {log})")


def _not_runnable(exe: str, e: OSError) -> UsageError:
    why = "not found" if isinstance(e, FileNotFoundError) else f"cannot be run ({e.strerror or e})"
    return UsageError(f"{exe} {why}", hint="install vLLM with its server (the serve kit), or give the vllm "
                                           "executable with --vllm-bin")


def check_runnable(exe: str) -> None:
    """Refuse, before anything is written, a vllm executable that is not there or cannot be run."""
    if shutil.which(exe) is None:  # None too for a file without the execute bit, or a folder
        raise _not_runnable(exe, PermissionError(13, "not an executable file") if os.path.exists(exe)
                            else FileNotFoundError())


def plugin_refusal(lines: Sequence[str], variant: Variant) -> str | None:
    """Why a server's log says its runs cannot stand for ``variant`` (None: they can). The profile variant needs
    the plugin loaded and the profile applied (and not disabled later); the others need no profile active."""
    said = [ln[ln.index("mla-tune:"):].strip() for ln in lines if "mla-tune:" in ln]
    if variant.name != "profile":
        active = [m for m in said if m.startswith("mla-tune: profile") or "plugin loaded with profile" in m]
        return f"a profile was active in the {variant.name} server: {one_line(active[0])}" if active else None
    if not any("plugin loaded with profile" in m for m in said):
        return ("mla-tune's plugin did not load in the server: install mla-tune in vLLM's environment "
                "(its vllm.general_plugins entry point)")
    failed = [m for m in said if " not applied" in m or " disabled at " in m]
    if failed:
        return one_line(failed[0])
    if not any(" applied to " in m for m in said):
        return "the plugin loaded the profile, but no engine applied it (no 'applied to' line in the server log)"
    return None


def version_of(vllm: str, env: Mapping[str, str]) -> str:
    """``vllm --version`` (vLLM's own answer), or "unknown"."""
    try:
        out = subprocess.run([vllm, "--version"], env=dict(env), capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    words = out.stdout.strip().split()
    return words[-1] if out.returncode == 0 and words else "unknown"


def gpu_name(env: Mapping[str, str]) -> str:
    """The first GPU's name from ``nvidia-smi``, or "unknown" (no driver here)."""
    visible = (env.get("CUDA_VISIBLE_DEVICES") or "").split(",")[0].strip()  # what the servers see as GPU 0
    try:
        out = subprocess.run(["nvidia-smi", *(["-i", visible] if visible else []), "--query-gpu=name",
                              "--format=csv,noheader"], env=dict(env),
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else "unknown"


__all__ = ["BenchError", "Server", "check_port_free", "check_runnable", "gpu_name", "last_words", "plugin_refusal",
           "run_client", "server", "version_of"]

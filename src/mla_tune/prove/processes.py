"""The processes of a ``bench-serve``: a ``vllm serve`` per variant and repeat, ``vllm bench serve`` per load.

A server runs in its own process group with its output in a log file, is up when ``/health`` answers, and is
stopped (SIGTERM to the group, then SIGKILL) whatever happens to the bench. Every failure is one line naming what
failed and the log line that says why.
"""

from __future__ import annotations

import contextlib
import os
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
        """SIGTERM to the server's process group (its engine processes too), SIGKILL if it lingers."""
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:  # noqa: S310 - loopback
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
        except FileNotFoundError:
            raise UsageError(f"{cmd[0]} not found", hint="install vLLM with its server (the serve kit), or give "
                                                         "its path with --vllm") from None
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
        except FileNotFoundError:
            raise UsageError(f"{cmd[0]} not found", hint="install vLLM (the serve kit), or give --vllm") from None
        except subprocess.TimeoutExpired:
            raise BenchError(f"vllm bench serve did not finish in {timeout_s:g} s: {last_words(log)} (log: {log})",
                             hint="raise --client-timeout, or lower --waves") from None
    if proc.returncode != 0:
        raise BenchError(f"vllm bench serve failed with status {proc.returncode}: {last_words(log)} (log: {log})")


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
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], env=dict(env),
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else "unknown"


__all__ = ["BenchError", "Server", "check_port_free", "gpu_name", "last_words", "plugin_refusal", "run_client",
           "server", "version_of"]

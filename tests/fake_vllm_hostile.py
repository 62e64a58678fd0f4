"""A hostile wrapper around ``fake_vllm.py`` (the test double of ``vllm``) for ``test_bench_serve_hostile.py``.

Everything not asked for here is ``fake_vllm``'s behaviour. Chosen by the environment:

``FAKE_HOSTILE_SERVE``
    ``disable-profile-later``: only a server started with ``MLA_TUNE_PROFILE`` prints the plugin's "disabled at
    decode" line at its first client run (``fake_vllm``'s own ``disabled-later`` prints it in every server, so
    the default server already refuses and the profile path is never reached);
    ``stubborn-child``: the server starts a child in its process group that ignores SIGTERM (an engine process
    stuck in a CUDA call), then serves;
    ``crash-leaving-child``: the same child, then the server exits 1 before it is up.
``FAKE_HOSTILE_BENCH_SLEEP``
    seconds the client sleeps before it runs (after writing ``$FAKE_VLLM_DIR/client_started`` with its pid).
``FAKE_HOSTILE_VERSION``
    what ``vllm --version`` prints.

Pids of children started here go to ``$FAKE_VLLM_DIR/child_pids``; the tests kill them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_vllm  # noqa: E402

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def _fake_dir() -> Path | None:
    d = os.environ.get("FAKE_VLLM_DIR")
    return Path(d) if d else None


def _stubborn_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", STUBBORN], stdin=subprocess.DEVNULL)
    d = _fake_dir()
    if d:
        with open(d / "child_pids", "a") as f:
            f.write(f"{child.pid}\n")
    time.sleep(0.3)  # let it install its handler


def main() -> None:
    args = sys.argv[1:]
    mode = os.environ.get("FAKE_HOSTILE_SERVE", "")
    if args == ["--version"] and os.environ.get("FAKE_HOSTILE_VERSION"):
        print(os.environ["FAKE_HOSTILE_VERSION"])
        return
    if args[:1] == ["serve"]:
        if mode == "disable-profile-later":
            os.environ["FAKE_VLLM_SERVE"] = "disabled-later" if os.environ.get("MLA_TUNE_PROFILE") else ""
        elif mode == "stubborn-child":
            _stubborn_child()
        elif mode == "crash-leaving-child":
            _stubborn_child()
            print("ERROR RuntimeError: engine core died (fake)", flush=True)
            sys.exit(1)
    if args[:2] == ["bench", "serve"] and os.environ.get("FAKE_HOSTILE_BENCH_SLEEP"):
        d = _fake_dir()
        if d:
            (d / "client_started").write_text(str(os.getpid()))
        time.sleep(float(os.environ["FAKE_HOSTILE_BENCH_SLEEP"]))
    fake_vllm.main()


if __name__ == "__main__":
    main()

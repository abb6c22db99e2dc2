"""`onnx-explain serve` in a child process on a free loopback port: for tests, benchmarks and notebooks."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model: Path, *args: str, timeout: float = 120.0):
    """Yields the base URL of `onnx-explain serve MODEL --port <free> ...`, stopped on exit.  The server's
    log goes to a temporary file (a pipe nobody reads would fill and stall it), quoted if it fails to start."""
    port = free_port()
    command = [sys.executable, "-c", "import sys; from onnx_explain.cli import main; sys.exit(main(sys.argv[1:]))",
               "serve", str(model), "--port", str(port), *args]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, url, log, timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(process: subprocess.Popen, url: str, log, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited with {process.returncode}: {log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not become ready within {timeout:.0f} s")
        time.sleep(0.3)

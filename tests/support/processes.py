"""Running the service's processes from tests: free ports, a clean environment, waiting."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment() -> dict[str, str]:
    """This process's environment without MONITOR_* settings, so only the config file counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}


def monitor(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m monitor --config CONFIG ARGS...`, run to completion."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        check=False,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclasses.dataclass
class Running:
    """A process started by `running`; `output` is its stdout and stderr once it ended."""

    process: subprocess.Popen[str]
    output: str = ""


@contextlib.contextmanager
def running(command: list[str], **kwargs: Any) -> Iterator[Running]:
    """`command` in the background, stopped with SIGTERM on exit (killed after 20 s). Its
    output is printed too, which pytest shows when the test fails."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )
    started = Running(process)
    try:
        yield started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            started.output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            started.output, _ = process.communicate()
        print(started.output)


def memory_bytes(pid: int, field: str) -> int:
    """A memory figure of a running process from /proc/<pid>/status, in bytes: `VmRSS` (now)
    or `VmHWM` (its peak resident set so far)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        name, _, value = line.partition(":")
        if name == field:
            number, unit = value.split()
            assert unit == "kB", line
            return int(number) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")

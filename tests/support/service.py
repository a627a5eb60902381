"""`app-rank-monitor run` as a real process, for the fault-injection and replica tests.

    config = write_config(tmp_path, database_url=url, feeds=server, smtp_port=smtp.port)
    with ServiceProcess(config, name="a") as service:     # or .start() / .stop()
        service.wait_ready()
        service.metric("apprank_outbox_pending")           # one sample of /metrics
        service.kill()                                     # SIGKILL, as a crash
    service.output                                         # everything it printed

The process writes to a log file, not a pipe: a long test cannot fill a pipe and stall it.
`extra_env` arms crash points (MONITOR_TEST_CRASH_AT) and the like; the rest of the
environment is the test's own without MONITOR_* variables, so only the config file counts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http_server import Request, Response, ScriptedServer
from tests.support.processes import environment, free_port, wait_for


def write_config(
    directory: Path,
    *,
    database_url: str,
    feeds: ScriptedServer,
    port: int | None = None,
    smtp_port: int | None = None,
    extra: str = "",
    name: str = "monitor",
    overrides: Mapping[str, Mapping[str, TomlValue]] | None = None,
) -> Path:
    """A config polling `feeds` for the US and GB top free and top paid charts every 3 s,
    with no request budget; `extra` is TOML appended as is (rules, overrides of other
    sections). With `smtp_port`, alerts go to ops@example.com through 127.0.0.1.
    `overrides` sets keys of the sections written here, e.g.
    `{"poll": {"lease": "12s"}, "charts": {"storefronts": ["us"]}}`."""
    config = directory / f"{name}.toml"
    smtp = (
        f"""
        [smtp]
        host = "127.0.0.1"
        port = {smtp_port}
        from_address = "monitor@example.com"

        [alerts]
        recipients = ["ops@example.com"]
        group_wait = "1s"
        """
        if smtp_port is not None
        else ""
    )
    config.write_text(
        textwrap.dedent(
            f"""
            [database]
            url = "{database_url}"

            [http]
            port = {port if port is not None else free_port()}

            [itunes]
            base_url = "{feeds.url("")}"

            [apple_rss]
            base_url = "{feeds.url("")}"

            [poll]
            interval = "3s"
            tick = "1s"

            [fetch]
            requests_per_minute = 0

            [charts]
            storefronts = ["us", "gb"]
            collections = ["top_free", "top_paid"]
            """
        )
        + textwrap.dedent(smtp)
        + textwrap.dedent(extra),
        encoding="utf-8",
    )
    if overrides:
        _override(config, overrides)
    return config


TomlValue = str | int | float | bool | list[str]
# `overrides={"fetch": ONE_SHORT_FETCH}`: one attempt of at most 2 s per fetch, so that the
# [poll] lease may be as short as 3 s (it must outlast the longest fetch).
ONE_SHORT_FETCH: dict[str, TomlValue] = {
    "max_attempts": 1,
    "deadline_seconds": 2,
    "connect_timeout_seconds": 1,
    "read_timeout_seconds": 2,
}


def _override(config: Path, overrides: Mapping[str, Mapping[str, TomlValue]]) -> None:
    """Set keys in the sections of `config` (each section must be in it already)."""
    lines = config.read_text(encoding="utf-8").splitlines()
    for section, values in overrides.items():
        header = lines.index(f"[{section}]")
        end = next(
            (i for i in range(header + 1, len(lines)) if lines[i].startswith("[")), len(lines)
        )
        body = [
            line for line in lines[header + 1 : end] if line.partition("=")[0].strip() not in values
        ]
        body += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines[header + 1 : end] = [*body, ""]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def http_port(config: Path) -> int:
    port: int = tomllib.loads(config.read_text(encoding="utf-8"))["http"]["port"]
    return port


class Charts(Protocol):
    def respond(self, path: str) -> bytes | None: ...


def serve_charts(charts: Charts) -> ScriptedServer:
    """A feed server (not started) answering every chart path from `charts` (FakeAppleCharts);
    other paths get a 404."""

    def respond(request: Request) -> Response:
        body = charts.respond(request.path)
        return Response(404) if body is None else Response(200, body)

    return ScriptedServer(fallback=respond)


class ServiceProcess:
    """One `run` process; see the module docstring. Usable once."""

    def __init__(
        self, config: Path, *, name: str = "service", extra_env: Mapping[str, str] = ()
    ) -> None:
        self.config = config
        self.port = http_port(config)
        self.log_path = config.parent / f"{name}.log"
        self._env = environment() | dict(extra_env)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "monitor", "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
            )
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.running:
            self.stop()
        if exc is not None:
            print(f"--- {self.log_path.name} ---\n{self.output}")

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str, timeout: float = 5) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)

    def is_ready(self) -> bool:
        try:
            return self.get("/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for(lambda: not self.running or self.is_ready(), "/readyz to answer 200", timeout)
        assert self.running, f"the service stopped:\n{self.output}"

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one series in /metrics now, or None when it is absent."""
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return None

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL, as a crash would; returns the exit status."""
        self.process.kill()
        return self.process.wait(timeout=10)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL if it outlasts `timeout`; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

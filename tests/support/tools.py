"""External tools the tests run (promtool, yamllint, docker-compose): found on PATH, or the
test skips with the reason, except under CI=true where a missing tool is a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require(tool: str, *, package: str | None = None) -> str:
    """The path of `tool`; `package` is the Debian package that installs it, if named otherwise."""
    path = shutil.which(tool)
    if path is not None:
        return path
    reason = f"{tool} is not installed (Debian package {package or tool})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; it is required under CI=true")
    pytest.skip(reason)


def assert_lints_clean(root: Path, *paths: Path) -> None:
    """yamllint --strict with the repository's .yamllint.yaml finds nothing in `paths`."""
    result = subprocess.run(
        [require("yamllint"), "--strict", "-c", ".yamllint.yaml",
         *(str(path.relative_to(root)) for path in paths)],
        cwd=root, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

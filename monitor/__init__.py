"""app-rank-monitor: polls app-store chart feeds into a durable ranking history."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("app-rank-monitor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

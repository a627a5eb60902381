"""Reading a compose file's services, as written or as `docker-compose config` resolves them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def volumes(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, container path) of each of a service's volumes, short or long syntax."""
    pairs = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *_ = volume.split(":")
        else:
            source, target = volume.get("source", ""), volume["target"]
        pairs.append((source, target.rstrip("/")))
    return pairs


def bind_mounts(service: Mapping[str, Any], root: Path) -> dict[str, Path]:
    """Container path -> host path (resolved against `root`) of a service's bind mounts."""
    return {
        target: (root / source).resolve()
        for source, target in volumes(service)
        if source.startswith((".", "/"))
    }


def named_volumes(service: Mapping[str, Any]) -> set[str]:
    return {source for source, _ in volumes(service) if source and source[0] not in "./"}

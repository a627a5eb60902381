"""Where configuration values come from: TOML files and MONITOR_* environment variables.

Every value read here keeps its origin, so a validation problem can name the file and line or
the variable that supplied the bad value. tomllib reports no positions for valid documents, so
`TomlDocument` finds a key's line by scanning the text while tracking tables, arrays of tables
and the elements of multi-line arrays of inline tables (enough for the files we read; a key it
cannot place is reported with the file name alone).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import enum
import json
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from monitor.config_types import format_duration

ENV_PREFIX = "MONITOR_"
FILE_SUFFIX = "_FILE"

Loc = tuple[str | int, ...]
Redactor = Callable[[Loc, object], str]

_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*$")
_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_KEY = re.compile(rf"^\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(_BARE_OR_QUOTED, text)
    return tuple(part[1:-1] if part[0] in "\"'" else part for part in parts)


def _code_only(line: str) -> str:
    """The line without string literals and comment, so brackets can be counted."""
    return _STRING.sub('""', line).split("#", 1)[0]


class TomlDocument:
    """A parsed TOML file plus the line of every key, table and inline-table element."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.data: dict[str, Any] = tomllib.loads(text)
        self._lines: dict[Loc, int] = {}
        self._index(text.splitlines())

    @classmethod
    def read(
        cls, path: Path, problems: list[str], *, what: str = "config file"
    ) -> TomlDocument | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: {what} does not exist")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read {what}: {exc}")
            return None
        try:
            return cls(path, text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            match = _POSITION.search(message)
            if match:
                line, column = match.groups()
                message = message[: match.start()]
                problems.append(f"{path}:{line}:{column}: TOML syntax error: {message}")
            else:
                problems.append(f"{path}: TOML syntax error: {message}")
            return None

    def _index(self, lines: list[str]) -> None:
        table: Loc = ()
        array_counts: dict[Loc, int] = {}
        in_multiline_string = False
        open_array: Loc | None = None  # the key whose multi-line array we are inside
        depth = 0
        elements = 0
        for number, line in enumerate(lines, start=1):
            inside_string = in_multiline_string
            if line.count('"""') % 2 or line.count("'''") % 2:
                in_multiline_string = not in_multiline_string
            if inside_string:
                continue
            code = _code_only(line)
            if open_array is not None:
                depth, elements = self._scan_array(code, open_array, number, depth, elements)
                if depth == 0:
                    open_array = None
                continue
            header = _HEADER.match(code)
            if header:
                path: Loc = _split_dotted(header.group(2))
                if header.group(1) == "[[":
                    index = array_counts.get(path, 0)
                    array_counts[path] = index + 1
                    path = (*path, index)
                table = path
                self._lines.setdefault(table, number)
                continue
            key = _KEY.match(code)
            if key:
                loc = (*table, *_split_dotted(key.group(1)))
                self._lines.setdefault(loc, number)
                value = code[key.end() :]
                if value.lstrip().startswith("["):
                    depth, elements = self._scan_array(value, loc, number, 0, 0)
                    open_array = loc if depth > 0 else None

    def _scan_array(
        self, code: str, loc: Loc, number: int, depth: int, elements: int
    ) -> tuple[int, int]:
        for char in code:
            if char in "[{":
                depth += 1
                if char == "{" and depth == 2:
                    self._lines.setdefault((*loc, elements), number)
                    elements += 1
            elif char in "]}":
                depth -= 1
        return depth, elements

    def line_of(self, loc: Loc) -> int | None:
        """The line of `loc`, or of its nearest enclosing key or table that has one."""
        for end in range(len(loc), 0, -1):
            line = self._lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def where(self, loc: Loc) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line is not None else str(self.path)


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where one configuration key got its value: a file, a variable, or the default."""

    document: TomlDocument | None = None
    env_name: str | None = None
    env_file: str | None = None

    def where(self, loc: Loc) -> str:
        if self.document is not None:
            return self.document.where(loc)
        if self.env_name is not None:
            return f"{self.env_name} ({self.env_file})" if self.env_file else self.env_name
        return "built-in default"


DEFAULT = Origin()


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _contains(annotation: object, predicate: Callable[[object], bool]) -> bool:
    if predicate(annotation):
        return True
    return any(_contains(arg, predicate) for arg in typing.get_args(annotation))


def _is_list(annotation: object) -> bool:
    return typing.get_origin(annotation) is list


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _list_from_env(text: str, *, json_only: bool) -> list[Any]:
    stripped = text.strip()
    if json_only or stripped.startswith("["):
        value = json.loads(stripped)  # JSONDecodeError is a ValueError, reported by the caller
        if not isinstance(value, list):
            raise ValueError("expected a JSON array")
        return value
    return [item.strip() for item in stripped.split(",") if item.strip()]


def read_env(
    environ: Mapping[str, str],
    sections: Mapping[str, type[BaseModel]],
    problems: list[str],
    *,
    allowed: Callable[[str], bool],
) -> dict[tuple[str, str], tuple[Any, Origin]]:
    """Collect `MONITOR_<SECTION>_<KEY>` (or its `_FILE` twin) for every field of every section.

    Values stay strings for pydantic's lax parsing, except list-valued keys: a JSON array or
    comma-separated items (lists of tables take JSON only). Unknown MONITOR_* names are reported
    unless `allowed` says they are not settings.
    """
    found: dict[tuple[str, str], tuple[Any, Origin]] = {}
    known: set[str] = set()
    for section, model in sections.items():
        for key, field in model.model_fields.items():
            name = env_name(section, key)
            known.update((name, name + FILE_SUFFIX))
            raw = _env_value(environ, name, problems)
            if raw is None:
                continue
            text, origin = raw
            if _contains(field.annotation, _is_list):
                json_only = _contains(field.annotation, _is_model)
                try:
                    found[(section, key)] = (_list_from_env(text, json_only=json_only), origin)
                except ValueError as exc:
                    shape = (
                        "a JSON array" if json_only else "a JSON array or comma-separated values"
                    )
                    problems.append(
                        f"{origin.where(())}: [{section}] {key}: expected {shape} ({exc})"
                    )
                continue
            found[(section, key)] = (text, origin)
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known and not allowed(name):
            problems.append(f"{name}: unknown setting{suggest(name, known)}")
    return found


def _env_value(
    environ: Mapping[str, str], name: str, problems: list[str]
) -> tuple[str, Origin] | None:
    file_name = name + FILE_SUFFIX
    if name in environ and file_name in environ:
        problems.append(f"{name} and {file_name} are both set: set only one")
        return None
    if name in environ:
        return environ[name], Origin(env_name=name)
    if file_name not in environ:
        return None
    secret_path = environ[file_name]
    try:
        text = Path(secret_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{file_name}: cannot read {secret_path!r}: {exc}")
        return None
    # Secret files are usually written by `echo` or an editor: the final newline is not data.
    return text.rstrip("\r\n"), Origin(env_name=file_name, env_file=secret_path)


def format_key(loc: Loc) -> str:
    """`("watchlist", "apps", 1, "store_id")` -> `[watchlist] apps[1].store_id`."""
    section, *rest = loc
    text = ""
    for part in rest:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"[{section}] {text}" if text else f"[{section}]"


def validation_problems(
    section: str,
    error: ValidationError,
    origin_of: Callable[[str], Origin],
    redact: Redactor,
) -> list[str]:
    """One line per pydantic error: where the value came from, the key, the value, the fix."""
    problems = []
    for item in error.errors(include_url=False):
        loc: Loc = (section, *item["loc"])
        key = str(item["loc"][0]) if item["loc"] else ""
        where = origin_of(key).where(loc)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            problems.append(f"{where}: {format_key(loc)}: required key is missing")
        else:
            problems.append(f"{where}: {format_key(loc)} = {redact(loc, item['input'])}: {message}")
    return problems


def plain(value: object) -> object:
    """A JSON-friendly copy of a validated value, for printing."""
    if isinstance(value, BaseModel):
        return {key: plain(item) for key, item in value}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.timedelta):
        return format_duration(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, types.NoneType | bool | int | float | str):
        return value
    return str(value)

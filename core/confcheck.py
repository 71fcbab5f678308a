"""Checks shared by the configuration models: file paths, files read at load time, format templates.

A leaf module (no imports from the rest of the package), so every layer's config model can use it.
Each check raises ``ValueError`` with a message fit for one ``path.to.key: message`` line; none of
them ever puts a file's content in a message.
"""

from __future__ import annotations

import os
import re
import stat
import string
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "MAX_FORMAT_WIDTH",
    "check_format_template",
    "check_path",
    "expand_path",
    "one_line",
    "read_regular_file",
]

#: the largest width or precision a format template may ask for (``{sender:<20}``): a padded column,
#: never a way to make every message hundreds of megabytes
MAX_FORMAT_WIDTH = 256

# [[fill]align][sign][z][#][0][width][grouping][.precision][type] (the format-spec mini-language)
_SPEC = re.compile(
    r"(?:(?P<fill>.)?(?P<align>[<>=^]))?(?P<sign>[+\- ])?z?#?0?(?P<width>\d+)?[_,]?"
    r"(?:\.(?P<precision>\d+))?(?P<type>[a-zA-Z%])?",
    re.DOTALL,
)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, CR, NUL, C1, line separators) written as escapes,
    so a key name or value quoted in a message can never start a line of its own."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")


def expand_path(path: Path | str) -> Path:
    """``path`` with a leading ``~`` / ``~user`` expanded; ValueError (not RuntimeError) when it cannot be."""
    text = os.fspath(path)
    _check_text(text)
    if not text.startswith("~"):
        return Path(text)
    try:
        return Path(text).expanduser()
    except RuntimeError:
        head = text.split("/", 1)[0]
        if head == "~":
            raise ValueError("cannot expand '~': the home directory is not known (set HOME)") from None
        raise ValueError(f"cannot expand {head!r}: no such user") from None


def check_path(path: Path | str | None) -> Path | None:
    """A path setting: no NUL character, ``~`` expanded (a field validator for ``Path`` settings)."""
    return None if path is None else expand_path(path)


def read_regular_file(path: Path, *, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file, at most ``max_bytes``. A FIFO, device or directory is refused
    (opened non-blocking, so a FIFO never hangs the reader). ``FileNotFoundError`` when there is
    none; every other problem is a ValueError naming ``what`` and the path only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {path} is not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"{what} {path} is larger than {max_bytes} bytes")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"{what} {path} is larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)


def check_format_template(template: str, fields: Iterable[str], *, required: Iterable[str] = ()) -> list[str]:
    """Validate a ``str.format`` template filled with string values: only ``fields`` by plain name
    (no attribute or index access, no positional ``{}``), no nested fields in a format spec, a
    format spec the mini-language accepts for text with width and precision at most
    :data:`MAX_FORMAT_WIDTH`, and every field of ``required`` present. Returns the field names used;
    raises ValueError naming the first problem."""
    allowed = frozenset(fields)
    shown = ", ".join("{" + f + "}" for f in sorted(allowed))
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    used: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in allowed:
            raise ValueError(f"unknown field {{{name}}}; use {shown}")
        if conversion not in (None, "s", "r", "a"):  # pragma: no cover - Formatter.parse refuses others
            raise ValueError(f"{{{name}}}: unknown conversion !{conversion}")
        if spec:
            _check_spec(name, spec)
        used.append(name)
    missing = [f for f in required if f not in used]
    if missing:
        raise ValueError("must contain " + ", ".join("{" + f + "}" for f in missing))
    try:  # what is left (a numeric type code for a text value, a sign) fails here, not per message
        template.format_map({f: "x" for f in allowed})
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"not a valid template for text values: {exc}") from None
    return used


def _check_spec(name: str, spec: str) -> None:
    if "{" in spec or "}" in spec:
        raise ValueError(f"{{{name}}}: a format spec may not contain nested fields")
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise ValueError(f"{{{name}}}: {spec!r} is not a valid format spec")
    for part in ("width", "precision"):
        value = m.group(part)
        if value is not None and (len(value) > 6 or int(value) > MAX_FORMAT_WIDTH):
            raise ValueError(f"{{{name}}}: {part} is larger than {MAX_FORMAT_WIDTH}")

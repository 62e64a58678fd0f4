"""Loading YAML data files strictly: every problem names the file and the key, in one line.

``load`` is the one way mla-tune reads a YAML file (tables, profiles, search spaces, models, workloads, traffic).
It reads only regular files, at most ``MAX_BYTES`` of them, as UTF-8 text; it refuses YAML aliases (an alias bomb
of a few KB expands to gigabytes), nesting deeper than ``MAX_DEPTH`` (deep nesting ends in a RecursionError
elsewhere) and duplicate keys (the last one would silently win). Deep nesting is one message whoever refuses it
first: libyaml 0.2.6 (PyYAML 6.0.4's wheels) stops at 1000 flow levels while scanning ahead, before the composer
here has seen 33, with its own words. Values are then checked by the caller with
``check_keys``/``expect`` and the number checks here.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import ScalarNode
from yaml.parser import ParserError
from yaml.resolver import Resolver
from yaml.scanner import ScannerError

from .errors import DataFileError

try:  # libyaml's parser when built in (4x faster); the composer below is always Python, to enforce the limits
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser as _PyParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, _PyParser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _PyParser.__init__(self)

SCHEMA_VERSION = 1
MAX_BYTES = 4 * 1024 * 1024  # the largest table is ~35 KB; a file this big is not one of ours
MAX_DEPTH = 32  # the deepest of ours is 5 (entries[i].best_candidate.params.<knob>)


class _Refused(yaml.MarkedYAMLError):
    """A limit of ``load``: no alias, no deep nesting, no duplicate key."""


TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
# PyYAML's own refusal of deep nesting (libyaml 0.2.6: "exceeded maximum nesting depth"), in whatever words: a
# scanner or parser error (those quote no key or value of the file) that speaks of nesting or depth.
_PYYAML_TOO_DEEP = re.compile(r"nest|depth|too deep", re.IGNORECASE)


def _pyyaml_too_deep(e: yaml.YAMLError) -> bool:
    return isinstance(e, (ScannerError, ParserError)) and bool(_PYYAML_TOO_DEEP.search(str(e.problem or "")))


class _StrictLoader(_Parser, SafeConstructor, Resolver):
    """PyYAML's safe loader with the limits checked while composing, before anything is expanded."""

    def __init__(self, text: str) -> None:
        _Parser.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0

    # Python's composer (the C loader composes in C, where aliases and depth cannot be refused).
    get_single_node = Composer.get_single_node
    compose_document = Composer.compose_document
    compose_scalar_node = Composer.compose_scalar_node
    compose_sequence_node = Composer.compose_sequence_node
    compose_mapping_node = Composer.compose_mapping_node

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(None, None, "YAML aliases (*name) are not accepted: write the value out", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(None, None, TOO_DEEP, self.peek_event().start_mark)
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_bytes(path: Path, max_bytes: int | None = None, what: str = "a file",
               sniff: Callable[[bytes], None] | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; anything else is one ``DataFileError`` line.

    The type is checked before opening (a FIFO would block the open, a device never ends), and again on the
    open descriptor; at most ``max_bytes + 1`` bytes are read, so /dev/zero or a growing file cannot fill memory.
    ``sniff`` sees what was read before the size is checked: a known kind of file can be named even when large.
    """
    name, max_bytes = str(path), MAX_BYTES if max_bytes is None else max_bytes
    check_regular_file(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DataFileError(name, "", f"cannot read: {e.strerror}") from e
    try:
        _check_type(name, os.fstat(fd).st_mode, what)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise DataFileError(name, "", f"cannot read: {e.strerror}") from e
    finally:
        os.close(fd)
    if sniff is not None:
        sniff(data)
    if len(data) > max_bytes:
        raise DataFileError(name, "", f"over the size limit of {max_bytes:,} bytes: not {what} mla-tune wrote")
    return data


def check_regular_file(path: Path, what: str = "a file") -> None:
    """``path`` is an existing regular file (a directory, FIFO, device or socket is one line), without opening it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise DataFileError(str(path), "", f"cannot read: {e.strerror}") from e
    _check_type(str(path), mode, what)


def _check_type(name: str, mode: int, what: str) -> None:
    if stat.S_ISDIR(mode):
        raise DataFileError(name, "", f"is a directory, expected {what}")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise DataFileError(name, "", f"is {kind}, expected {what} (a regular file)")


_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
         (b"\xfe\xff", "UTF-16"))


def decode_text(name: str, data: bytes, what: str = "text") -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); UTF-16/32, binary or other encodings are one line."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            raise DataFileError(name, "", f"is {enc} text; save it as UTF-8")
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise DataFileError(name, "", f"has a NUL byte at offset {at}: a binary or UTF-16 file, not UTF-8 {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFileError(name, "", f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def parse(name: str, text: str) -> Any:
    """YAML text -> Python data, within the limits of ``_StrictLoader``; a problem names its line."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        if _pyyaml_too_deep(e):
            problem = TOO_DEEP  # PyYAML refused the nesting before the composer could: the same limit, one message
        raise DataFileError(name, where, f"not valid YAML: {' '.join(str(problem).split())}") from None
    except RecursionError:  # nesting that got past every limit above still gets the one message
        raise DataFileError(name, "", f"not valid YAML: {TOO_DEEP}") from None
    except (ValueError, OverflowError) as e:  # an int of 5000 digits, a date of month 13, ...
        raise DataFileError(name, "", f"not valid YAML: {' '.join(str(e).split())[:200]}") from None
    finally:
        loader.dispose()


_SQLITE = b"SQLite format 3\x00"
_JOURNAL = re.compile(rb'\s*\{\s*"op_code"\s*:')  # the first line of an Optuna journal file: {"op_code":0,...


def refuse_storage(name: str, data: bytes) -> None:
    """An Optuna study storage (a journal file, an SQLite database) where a YAML file goes, as in
    ``mla-tune show results/studies.journal``: one line saying what it is and how to read it."""
    if data.startswith(_SQLITE):
        raise DataFileError(name, "", "is an SQLite database (a study storage?), not YAML: list its studies with "
                            f"`mla-tune show --storage sqlite:///{name}`")
    if _JOURNAL.match(data[:200]):
        raise DataFileError(name, "", "is an Optuna journal (a study storage), not YAML: list its studies with "
                            f"`mla-tune show --storage {name}`")


def load(path: Path, versions: tuple[int, ...] = (SCHEMA_VERSION,)) -> dict[str, Any]:
    """Parse ``path`` into a mapping and check its ``schema_version`` is one of ``versions`` (a format that grew a
    version, tuning tables, passes those it reads)."""
    name = str(path)
    raw = read_bytes(Path(path), what="a YAML file", sniff=lambda head: refuse_storage(name, head))
    data = parse(name, decode_text(name, raw, "YAML text"))
    if not isinstance(data, dict):
        raise DataFileError(name, "", "expected a mapping at the top level")
    version = data.get("schema_version")
    if version not in versions or isinstance(version, bool):
        raise DataFileError(name, "schema_version", f"is {short(version)}, this mla-tune reads schema_version "
                            f"{' or '.join(map(str, versions))}")
    return data


def short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to one short line: a message quoting a value from a file stays one line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_keys(path: Path, where: str, data: Any, required: Iterable[str], optional: Iterable[str] = ()
               ) -> Mapping[str, Any]:
    """``data`` must be a mapping with all of ``required`` and nothing outside ``required | optional``."""
    if not isinstance(data, dict):
        raise DataFileError(str(path), where, f"expected a mapping, got {_what(data)}")
    required, allowed = set(required), set(required) | set(optional)
    for key in data:
        if key not in allowed:
            name = key[:60] if isinstance(key, str) else short(key)
            raise DataFileError(str(path), f"{where}.{name}" if where else name,
                                f"unknown key; allowed: {', '.join(sorted(allowed))}")
    for key in sorted(required - set(data)):
        raise DataFileError(str(path), f"{where}.{key}" if where else key, "missing")
    return data


def _what(value: Any) -> str:
    return f"{type(value).__name__} {short(value, 40)}" if value is not None else "null"


def expect(path: Path, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` must be an instance of ``kind`` (bools are not ints here)."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise DataFileError(str(path), key, f"expected {what}, got {short(value)}")
    if not isinstance(value, kind):
        raise DataFileError(str(path), key, f"expected {what}, got {short(value)}")
    return value


# Sane bounds of the numbers mla-tune's files hold, so that what reads them never overflows or prints nonsense.
MAX_MS = 3_600_000.0  # a latency or sample in milliseconds: an hour, far above any kernel call measured
MAX_RATIO = 10_000.0  # a speedup or an end of its interval
MAX_WEIGHT = 1e15  # a traffic weight (a count of batches, say)


def number(path: Path, key: str, value: Any, *, low: float = 0.0, high: float = math.inf,
           low_open: bool = True) -> float:
    """A finite int or float in ``(low, high]`` (``[low, high]`` with ``low_open=False``); NaN, inf and an int too
    large for a float (400 digits) never."""
    expect(path, key, value, (int, float), "a number")
    try:
        x = float(value)
    except OverflowError:  # an int of hundreds of digits: math.isfinite would raise it
        x = math.inf
    if not (math.isfinite(x) and (x > low if low_open else x >= low) and x <= high):
        span = f"{'>' if low_open else '>='} {low:g}"
        if math.isfinite(high):  # a range of a few units reads as one; a sanity bound as an afterthought
            span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high <= 100 else f"{span}, at most {high:g}"
        raise DataFileError(str(path), key, f"is {short(value)}, expected a finite number {span}")
    return x


def integer(path: Path, key: str, value: Any, *, low: int = 1, high: int = 2**31 - 1) -> int:
    """An int (not a bool) in ``[low, high]``."""
    expect(path, key, value, int, "an integer")
    if not low <= value <= high:
        raise DataFileError(str(path), key, f"is {short(value)}, expected an integer in [{low}, {high}]")
    return value

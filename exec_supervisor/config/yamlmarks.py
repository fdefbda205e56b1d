"""YAML with line marks: a loader that records where every key and item stood.

The one place that touches PyYAML. Never parses YAML by hand: PyYAML's (C) loader does,
and this module only remembers node positions for error messages.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .constants import MAX_CONFIG_BYTES
from .errors import ConfigError, Problem

try:  # the C parser is ~10x faster; fall back when libyaml is missing
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


class _MarkedLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """A safe loader that remembers the line of every map key and list item, and duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.keep: list[Any] = []  # the containers, so their id() stays theirs
        self.starts: dict[int, int] = {}  # id(container) -> line it starts on
        self.marks: dict[int, dict[Any, int]] = {}  # id(container) -> key/index -> line
        self.duplicates: list[tuple[int, Any, int, int]] = []  # id(map), key, line, first line

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # e.g. `2024-13-45` is a timestamp with a bad month
            reason = str(exc)
            if "integer string conversion" in reason:  # Python's int-to-str limit, in its own words
                reason = "a number with more than 4300 digits"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({reason})", node.start_mark
            ) from None


def _construct_map(loader: _MarkedLoader, node: yaml.MappingNode) -> Any:
    data: dict[Any, Any] = {}
    loader.keep.append(data)
    loader.starts[id(data)] = node.start_mark.line + 1
    yield data
    own = [key_node for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge"]
    data.update(loader.construct_mapping(node))  # flattens `<<` merges into node.value
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:  # merged keys first, then the map's own
        lines[loader.construct_object(key_node)] = key_node.start_mark.line + 1
    first: dict[Any, int] = {}
    for key_node in own:
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in first:
            loader.duplicates.append((id(data), key, line, first[key]))
        else:
            first[key] = line
    loader.marks[id(data)] = lines


def _construct_seq(loader: _MarkedLoader, node: yaml.SequenceNode) -> Any:
    data: list[Any] = []
    loader.keep.append(data)
    loader.starts[id(data)] = node.start_mark.line + 1
    yield data
    data.extend(loader.construct_sequence(node))
    loader.marks[id(data)] = {i: item.start_mark.line + 1 for i, item in enumerate(node.value)}


_MarkedLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_MarkedLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class LineIndex:
    """Maps a key path (through the loaded data) to the line of that key or list item."""

    def __init__(self, root: Any, loader: _MarkedLoader) -> None:
        self.root = root
        self.keep = loader.keep
        self.starts = loader.starts
        self.marks = loader.marks
        self.duplicates: list[tuple[tuple[Any, ...], int, int]] = []
        if loader.duplicates:
            paths = self._container_paths()
            for container, key, line, first in loader.duplicates:
                if container in paths:
                    self.duplicates.append((paths[container] + (key,), line, first))

    def _container_paths(self) -> dict[int, tuple[Any, ...]]:
        paths: dict[int, tuple[Any, ...]] = {}
        stack: list[tuple[Any, tuple[Any, ...]]] = [(self.root, ())]
        while stack:
            value, path = stack.pop()
            if not isinstance(value, (dict, list)) or id(value) in paths:
                continue
            paths[id(value)] = path
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, path + (key,)) for key, child in items)
        return paths

    def line(self, path: tuple[Any, ...]) -> int | None:
        current = self.root
        line = self.starts.get(id(current))
        for part in path:
            marks = self.marks.get(id(current))
            if marks is None or not isinstance(current, (dict, list)):
                break
            try:
                found = marks.get(part)
            except TypeError:  # an unhashable part
                break
            if found is None:
                break
            line = found
            current = current[part]
        return line


def has_key(mapping: dict[Any, Any], key: Any) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


def _read_bounded(path: Path) -> bytes:
    """The file's bytes: a regular file of at most MAX_CONFIG_BYTES, opened without blocking.

    O_NONBLOCK so that a FIFO opens at once (and is then refused) instead of waiting for a writer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"it is {_kind_of_file(info.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, min(1024 * 1024, MAX_CONFIG_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"it is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; "
                             "a farm config is a few KiB")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind_of_file(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def read_yaml(path: Path, display: str) -> tuple[Any, LineIndex]:
    def fail(message: str, line: int | None = None) -> ConfigError:
        return ConfigError([Problem(display, line, "", message)])

    try:
        raw = _read_bounded(path)
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a directory, not a config file") from None
    except PermissionError:
        raise fail("cannot read it: permission denied") from None
    except OSError as exc:
        raise fail(f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL character in the path; or what _read_bounded refuses
        raise fail(f"cannot read it: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, start) + 1
        column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        raise fail(f"not a YAML file: it is not UTF-8 text (byte 0x{raw[start]:02x}, byte {column} of line {line}); "
                   "save it as UTF-8", line) from None
    loader = _MarkedLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        if node is not None and id(data) not in loader.starts:
            loader.keep.append(data)
            loader.starts[id(data)] = node.start_mark.line + 1  # a scalar: where it is
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "unreadable"
        lines = text.splitlines()
        line_text = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
        if mark is not None and "\t" in line_text[:mark.column + 1]:
            what += f" (a tab, column {line_text.index(chr(9)) + 1}: YAML indents with spaces only)"
        raise fail(f"not valid YAML: {what}", mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise fail(f"not valid YAML: character {exc.character!r} is not allowed", line) from None
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from None
    except RecursionError:
        raise fail("not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return data, LineIndex(data, loader)


# --------------------------------------------------------------------------- collecting problems

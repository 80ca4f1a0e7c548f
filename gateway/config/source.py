"""Config text to data: a bounded read, ${VAR} substitution and YAML loading with line:column problems."""

import os
import re

import yaml

MAX_BYTES = 1024 * 1024  # a gateway.yaml is a few KiB; past this it is not one
MAX_DEPTH = 64           # nesting levels; PyYAML's composer recurses per level and overflows near 490


class Unreadable(Exception):
    """The file cannot be read as a config; the message says why."""


def read_text(path):
    """The file's text: refused by size before it is read whole, and unless it is UTF-8."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_BYTES:
            raise Unreadable(f"larger than 1 MiB ({size} bytes): not a config file")
        raw = file.read(MAX_BYTES + 1)  # st_size is 0 for pipes and devices: never read more than this
    if len(raw) > MAX_BYTES:
        raise Unreadable("larger than 1 MiB: not a config file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None

# $$, ${BODY}, or a "${" that is never closed on its line.
_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}\n]*)\}|(?P<open>\{))")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<fallback>:-(?P<default>.*))?\Z", re.S)


def substitute_env(text, environ):
    """`text` with ${VAR}, ${VAR:-default} and $$ replaced; plus [(line, message)] problems.

    Whole-line comments are left as they are, so a commented-out ${VAR} needs no value.
    """
    problems = []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.lstrip().startswith("#"):
            lines[number - 1] = _REFERENCE.sub(lambda m: _expand(m, environ, number, problems), line)
    return "\n".join(lines), problems


def _expand(match, environ, number, problems):
    if match["dollar"]:
        return "$"
    if match["open"]:
        problems.append((number, "'${' is not closed by '}' on its line"))
        return match[0]
    body = _BODY.match(match["body"])
    if body is None:
        problems.append((number, f"{match[0]} is not a valid substitution (use ${{NAME}} or ${{NAME:-default}})"))
        return match[0]
    value = environ.get(body["name"])
    if body["fallback"] and not value:
        return body["default"]
    if value is None:
        problems.append((number, f"${{{body['name']}}} is not set"))
        return ""
    return value


class _Loader(yaml.SafeLoader):
    """SafeLoader that notes keys repeated within one mapping (PyYAML keeps the last silently),
    refuses nesting past MAX_DEPTH, and reports values Python cannot build at their line."""

    def __init__(self, stream):
        self.duplicates = []
        self._depth = 0
        super().__init__(stream)

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # int("1" * 5000), 2001-13-45, ...
            what = node.tag.rpartition(":")[2] or "value"
            raise yaml.constructor.ConstructorError(None, None, f"not a valid {what}: {str(exc).split(';')[0]}",
                                                    node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    self.duplicates.append((_mark(key_node.start_mark), f"duplicate key '{key_node.value}'"))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text):
    """(ok, data, [(where, message)]): `where` is "line:column" (1-based) or "" if unknown.

    Duplicate keys are problems too, but the data is still usable (ok is True).
    """
    try:
        loader = _Loader(text)  # the reader checks every character here
    except yaml.reader.ReaderError as exc:
        return False, None, [_reader_problem(text, exc)]
    except yaml.YAMLError as exc:
        return False, None, [("", " ".join(str(exc).split()))]
    try:
        return True, loader.get_single_data(), loader.duplicates
    except yaml.MarkedYAMLError as exc:
        return False, None, [_marked_problem(exc)]
    except yaml.YAMLError as exc:
        return False, None, [("", " ".join(str(exc).split()))]
    except RecursionError:  # merge keys (<<) nested past the stack; MAX_DEPTH stops plain nesting first
        return False, None, [("", "nested too deeply to load")]
    finally:
        loader.dispose()


def _reader_problem(text, exc):
    """(line:column, message) for a character YAML does not allow (NUL, other control bytes)."""
    if not isinstance(exc.character, int):  # bytes input only: we always pass text
        return "", " ".join(str(exc).split())
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    name = f"U+{exc.character:04X}"
    return f"{line}:{column}", f"character {name} is not allowed in YAML (a control character?)"


def _marked_problem(exc):
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message = f"{message} ({exc.context}{where})"
    return (_mark(mark) if mark else ""), message


def _mark(mark):
    return f"{mark.line + 1}:{mark.column + 1}"

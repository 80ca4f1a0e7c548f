"""Helpers of config.py: ${VAR} substitution, YAML loading, Key tables and their walker, value checks."""

import difflib
import inspect
import ipaddress
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import yaml

from gateway import importing

# $$, ${BODY}, or a "${" that is never closed on its line.
_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}\n]*)\}|(?P<open>\{))")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<fallback>:-(?P<default>.*))?\Z", re.S)

TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


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
    """SafeLoader that also notes keys repeated within one mapping (PyYAML keeps the last silently)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates = []

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
    loader = _Loader(text)
    try:
        return True, loader.get_single_data(), loader.duplicates
    except yaml.MarkedYAMLError as exc:
        return False, None, [_marked_problem(exc)]
    except yaml.YAMLError as exc:
        return False, None, [("", " ".join(str(exc).split()))]
    finally:
        loader.dispose()


def _marked_problem(exc):
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message = f"{message} ({exc.context}{where})"
    return (_mark(mark) if mark else ""), message


def _mark(mark):
    return f"{mark.line + 1}:{mark.column + 1}"


@dataclass(frozen=True)
class Key:
    """One key of a table: its type, whether required, its default and a check (value -> message or None).

    `item` validates each element of a list; `table` the keys of a nested mapping.
    """

    type: type
    required: bool = False
    default: Any = None
    check: Callable[[Any], "str | None"] | None = None
    item: "Key | None" = None
    table: Mapping[str, "Key"] | None = None


def render(path):
    """("listeners", 2, "groups", 0) -> "listeners[2].groups[0]"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class Walker:
    """Walks data against Key tables, collecting every problem as (key path, message, warning)."""

    def __init__(self):
        self.problems = []

    def add(self, path, message, *, warning=False):
        self.problems.append((render(path), message, warning))

    def table(self, table, data, path=(), *, foreign=None):
        """Valid values of mapping `data` (defaults filled, invalid keys left out).

        `foreign` maps keys known elsewhere but not allowed here to their message.
        """
        if not self._type_ok(dict, data, path):
            return {}
        for key in data:
            if key not in table:
                self._unknown(key, table, path, foreign or {})
        values = {}
        for key, spec in table.items():
            present = key in data and (data[key] is not None or spec.required)
            if present:
                ok, value = self.value(spec, data[key], (*path, key))
                if ok:
                    values[key] = value
            elif spec.required:
                self.add((*path, key), "required key is missing")
            else:
                values[key] = spec.default
        return values

    def value(self, spec, value, path):
        """(ok, value) after checking type, then list items or nested keys, then `spec.check`."""
        before = len(self.problems)
        if not self._type_ok(spec.type, value, path):
            return False, None
        if spec.item is not None:
            value = [self.value(spec.item, item, (*path, i))[1] for i, item in enumerate(value)]
        if spec.table is not None:
            value = self.table(spec.table, value, path)
        if len(self.problems) == before and spec.check is not None:
            message = spec.check(value)
            if message:
                self.add(path, message)
        return len(self.problems) == before, value

    def _type_ok(self, want, value, path):
        if is_type(want, value):
            return True
        self.add(path, f"expected {TYPE_NAMES[want]}, got {show(value)}")
        return False

    def _unknown(self, key, table, path, foreign):
        if key in foreign:
            self.add((*path, key), foreign[key])
            return
        close = difflib.get_close_matches(str(key), list(table), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "expected one of: " + ", ".join(table)
        self.add((*path, str(key)), f"unknown key ({hint})")


def is_type(want, value):
    """isinstance, but a bool is never an int or a number, and an int is a number."""
    if want is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if want is float else want)


def show(value):
    """A YAML-ish rendering of a wrong value for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    return {list: "a list", dict: "a mapping"}.get(type(value), f"a {type(value).__name__}")


def in_range(low, high):
    """Check: low <= value <= high."""
    return lambda value: None if low <= value <= high else f"{value} is outside {low}-{high}"


def at_least(low):
    """Check: value >= low."""
    return lambda value: None if value >= low else f"{value} is less than {low}"


def positive(value):
    """Check: a finite number above zero."""
    return None if 0 < value < float("inf") else f"{value} is not a positive number"


def non_empty(value):
    """Check: a non-empty string or list."""
    return None if len(value) else "must not be empty"


def one_of(*choices):
    """Check: value is one of `choices`."""
    return lambda value: None if value in choices else f"{value!r} is not one of: {', '.join(choices)}"


# Values of gateway.yaml: addresses, interface names, channel names.

CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,99}\Z")  # channels.layers.BaseChannelLayer's rule, no "!"


def ip(text):
    """An ipaddress object (IPv6 scope kept), or None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def looks_like_address(text):
    """Meant as an address rather than an interface name (interface names have no ':')."""
    return ":" in text or re.fullmatch(r"[0-9.]+", text) is not None


def channel_name(value):
    """Check: a name Channels accepts for a channel."""
    if CHANNEL_NAME.match(value):
        return None
    return f"{value!r} is not a valid channel name (letters, digits, '_', '.', '-'; under 100 characters)"


def valid_address(value):
    """Check: an IPv4 or IPv6 address."""
    return None if ip(value) else f"{value!r} is not a valid IP address"


def multicast_group(value):
    """Check: a multicast address."""
    address = ip(value)
    if address is None:
        return valid_address(value)
    return None if address.is_multicast else f"{value} is not a multicast address"


def unicast(value):
    """Check: an address one host can send from (an SSM source)."""
    address = ip(value)
    if address is None:
        return valid_address(value)
    bad = address.is_multicast or address.is_unspecified
    return f"{value} is not a unicast address" if bad else None


def remote_host(value):
    """Check: an address; host names are not resolved."""
    return None if ip(value) else f"{value!r} is not an IP address (host names are not resolved)"


def interface_spec(value):
    """An address, or something that can be a (Linux) interface name."""
    if looks_like_address(value):
        return valid_address(value)
    if 0 < len(value) < 16 and "/" not in value and not any(c.isspace() for c in value):
        return None
    return f"{value!r} is not an IP address or interface name"


def application_spec(value):
    """Check: "module:attribute"."""
    if ":" not in value:
        return f"{value!r} is not in the form 'module:attribute'"
    return import_format(value)


def import_format(value):
    """Check: something import_from_string can parse."""
    try:
        importing.split_spec(value)
    except importing.ImportFromStringError as exc:
        return str(exc)
    return None


def string_keys(value):
    """Check: a mapping usable as keyword arguments."""
    bad = [key for key in value if not isinstance(key, str)]
    return f"keys must be strings, not {bad[0]!r}" if bad else None


def scoped(address, name):
    """An IPv6 address as bound on interface `name`: link-local ones need "%name"."""
    return f"{address}%{name}" if ip(address).is_link_local else address


def clash(mine, theirs):
    """The message if two (listener, address, port, reuse_port) binds collide, else None."""
    i, a, port, reuse = mine
    j, b, other_port, other_reuse = theirs
    if port != other_port or (reuse and other_reuse) or not overlaps(a, b):
        return None
    return f"{a} port {port} is already bound by listeners[{j}] ({b}); set reuse_port on both to share it"


def overlaps(a, b):
    """Same address, or a wildcard and an address of its family; names compare as written."""
    first, second = ip(a), ip(b)
    if first is None or second is None:
        return a == b
    if first.version != second.version:
        return False
    return first == second or first.is_unspecified or second.is_unspecified


def _redis_missing(backend, exc):
    """channels_redis itself, or a package it needs, is not installed."""
    missing = exc.missing or ""
    if missing == "channels_redis":
        return True
    return bool(missing) and backend.startswith("channels_redis.") and not missing.startswith("channels_redis")


def _parameters(layer_class):
    """(accepted, required) keyword names of the layer class, or (None, ()) if it takes **kwargs."""
    try:
        parameters = list(inspect.signature(layer_class.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None, ()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None, ()
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [p.name for p in named], [p.name for p in named if p.default is p.empty]


def read_sysctl(name):
    """An integer from /proc/sys/net/ipv4/<name> (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


# Imports of application and backend.

MEMORY = "memory"
MEMORY_CONFIG_KEYS = ("expiry", "group_expiry", "capacity", "channel_capacity")
REDIS_HINT = "channels_redis is not installed (pip install 'udpgateway[redis]')"


def put_first_on_path(directory):
    """Make `directory` the first entry of sys.path, exactly once."""
    if sys.path[:1] != [directory]:
        while directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)


def application_problems(spec):
    """Messages for an `application` that cannot be imported or is not callable."""
    try:
        application = importing.import_from_string(spec)
    except importing.ImportFromStringError as exc:
        return [str(exc)]
    return [] if callable(application) else [f"{spec} is not callable (an ASGI application is)"]


def backend_problems(backend, config):
    """[(key path under channel_layer, message)] for the backend and its `config` keys."""
    if backend == MEMORY:
        return _config_key_problems(backend, config, MEMORY_CONFIG_KEYS, ())
    try:
        layer_class = importing.import_from_string(backend)
    except importing.ImportFromStringError as exc:
        return [(("backend",), REDIS_HINT if _redis_missing(backend, exc) else str(exc))]
    if not callable(layer_class):
        return [(("backend",), f"{backend} is not a class")]
    return _config_key_problems(backend, config, *_parameters(layer_class))


def _config_key_problems(backend, config, accepted, required):
    """Unknown keys (with a did-you-mean) and missing required ones; nothing to say for **kwargs."""
    if config is None or accepted is None:
        return []
    problems = []
    for key in config:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "accepted: " + ", ".join(accepted)
            problems.append((("config", key), f"unknown key for {backend} ({hint})"))
    for key in required:
        if key not in config:
            problems.append((("config",), f"required key '{key}' of {backend} is missing"))
    return problems

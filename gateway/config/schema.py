"""Key: one key of a table; Walker: checks data against tables, collecting problems; the value checks."""

import difflib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from gateway import importing

TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


@dataclass(frozen=True)
class Key:
    """One key of a table: its type, whether required, its default and a check (value -> message or None).

    `item` validates each element of a list; `table` the keys of a nested mapping. With `nullable`, an
    explicit null is a value of its own (None, "no limit"), not "use the default".
    """

    type: type
    required: bool = False
    default: Any = None
    check: Callable[[Any], "str | None"] | None = None
    item: "Key | None" = None
    table: Mapping[str, "Key"] | None = None
    nullable: bool = False


def render(path):
    """("listeners", 2, "groups", 0) -> "listeners[2].groups[0]"."""
    text = ""
    for part in path:
        if isinstance(part, str) and (len(part) > 60 or _CONTROL.search(part)):  # a hostile key, shown escaped
            part = part[:60].encode("unicode_escape").decode("ascii") + ("..." if len(part) > 60 else "")
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


MAX_MESSAGE = 300  # characters of one problem's message


class Walker:
    """Walks data against Key tables, collecting every problem as (key path, message, warning)."""

    def __init__(self):
        self.problems = []

    def add(self, path, message, *, warning=False):
        if len(message) > MAX_MESSAGE:  # a value quoted in full could be a megabyte long
            message = message[: MAX_MESSAGE - 3] + "..."
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
            if key in data and data[key] is None and spec.nullable:
                values[key] = None
            elif present:
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
        if not is_type(want, value):
            self.add(path, f"expected {TYPE_NAMES[want]}, got {show(value)}")
            return False
        if want is str and _CONTROL.search(value):
            self.add(path, f"contains the control character U+{ord(_CONTROL.search(value)[0]):04X}")
            return False
        return True

    def _unknown(self, key, table, path, foreign):
        if key in foreign:
            self.add((*path, key), foreign[key])
            return
        close = difflib.get_close_matches(str(key), list(table), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "expected one of: " + ", ".join(table)
        self.add((*path, str(key)), f"unknown key ({hint})")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # quoted "\0" or "\t" escapes get past the YAML reader


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
        return number(value)
    if isinstance(value, str):
        return repr(value)
    return {list: "a list", dict: "a mapping"}.get(type(value), f"a {type(value).__name__}")


def number(value):
    """A number for a message; YAML hex or 1:2:3 ints can have more digits than str() will write."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit number"
    return str(value)


def in_range(low, high):
    """Check: low <= value <= high."""
    return lambda value: None if low <= value <= high else f"{number(value)} is outside {low}-{high}"


def at_least(low):
    """Check: value >= low."""
    return lambda value: None if value >= low else f"{number(value)} is less than {low}"


def positive(value):
    """Check: a finite number above zero (that a float can hold)."""
    try:
        ok = 0 < float(value) < float("inf")
    except OverflowError:
        ok = False
    return None if ok else f"{number(value)} is not a positive number"


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


def ip_network(text):
    """An IPv4Network or IPv6Network (host bits cleared; a bare address is a /32 or /128), or None."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def network(value):
    """Check: a network in CIDR notation or a bare address, without host bits set."""
    found = ip_network(value)
    if found is None:
        return f"{value!r} is not an IP address or network (like 192.0.2.0/24 or 2001:db8::/32)"
    try:
        ipaddress.ip_network(value)
    except ValueError:
        return f"{value} has host bits set; did you mean {found}?"
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
    return f"keys must be strings, not {show(bad[0])}" if bad else None


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

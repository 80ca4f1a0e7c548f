"""Config text to data: ${VAR} substitution and YAML loading with line:column problems."""

import re

import yaml

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

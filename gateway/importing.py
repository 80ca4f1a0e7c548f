"""import_from_string("module:attr"): a missing module and a module that fails on import told apart."""

import importlib


class ImportFromStringError(Exception):
    """`spec` cannot be imported; the message is one line for the operator.

    `missing` names the module Python could not find, where that was the cause.
    """

    def __init__(self, message, *, missing=None):
        super().__init__(message)
        self.missing = missing


def import_from_string(spec):
    """The object named by "module:attr" (attr may be dotted) or by a dotted path "pkg.mod.Class"."""
    module_name, attr = split_spec(spec)
    module = _import_module(module_name)
    found = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ImportFromStringError(f"module '{module_name}' has no attribute '{attr}'") from None
    return found


def split_spec(spec):
    """(module, attr) of "module:attr" or "pkg.mod.attr"; ImportFromStringError on a bad format."""
    if not isinstance(spec, str):
        raise ImportFromStringError(f"{spec!r} is not a string")
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not (_dotted(module_name) and _dotted(attr)):
        raise ImportFromStringError(f"'{spec}' is not in the form 'module:attribute' or 'package.module.attribute'")
    return module_name, attr


def _dotted(name):
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _import_module(module_name):
    """Import it; only a missing `module_name` (or parent) is "could not import"."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_self_or_parent(exc.name, module_name):
            raise ImportFromStringError(f"could not import module '{module_name}'", missing=exc.name) from None
        raise ImportFromStringError(_raised(module_name, exc), missing=exc.name) from None
    except Exception as exc:
        raise ImportFromStringError(_raised(module_name, exc)) from None


def _is_self_or_parent(name, module_name):
    return module_name == name or module_name.startswith(name + ".")


def _raised(module_name, exc):
    detail = " ".join(str(exc).split())  # one line, whatever the exception's message holds
    return f"importing module '{module_name}' raised {type(exc).__name__}: {detail}"

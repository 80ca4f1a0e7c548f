"""Tests for gateway.importing: what is imported, and the one-line error for each way it fails."""

import sys

import pytest

from gateway.importing import ImportFromStringError, import_from_string, split_spec

MODULES = {
    "imp_ok": "class Outer:\n    class Inner:\n        value = 42\n\napplication = object()\n",
    "imp_raises": "raise ValueError('boom')\n",
    "imp_needs_missing": "import imp_not_installed_xyz\n",
    "imp_syntax": "def broken(:\n",
    "imp_pkg/__init__": "",
    "imp_pkg/sub": "class Layer:\n    pass\n",
}


@pytest.fixture(autouse=True)
def modules(tmp_path, monkeypatch):
    """Fixture modules in tmp_path, importable for the test and forgotten after it."""
    for name, source in MODULES.items():
        path = tmp_path / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [n for n in sys.modules if n.startswith("imp_")]:
        del sys.modules[name]


def test_module_and_attribute():
    """"module:attr" gives the attribute."""
    import imp_ok

    assert import_from_string("imp_ok:application") is imp_ok.application


def test_dotted_attribute():
    """The attribute part may be dotted."""
    assert import_from_string("imp_ok:Outer.Inner").value == 42


def test_dotted_path():
    """A plain dotted path names a module and its last component as attribute."""
    assert import_from_string("imp_pkg.sub.Layer").__name__ == "Layer"
    assert import_from_string("imp_pkg.sub:Layer") is import_from_string("imp_pkg.sub.Layer")


def error(spec):
    with pytest.raises(ImportFromStringError) as info:
        import_from_string(spec)
    return info.value


@pytest.mark.parametrize(
    "spec, message",
    [
        ("imp_nosuch:app", "could not import module 'imp_nosuch'"),
        ("imp_nosuch.sub:app", "could not import module 'imp_nosuch.sub'"),
        ("imp_pkg.nosuch:app", "could not import module 'imp_pkg.nosuch'"),
        ("imp_pkg.nosuch.Layer", "could not import module 'imp_pkg.nosuch'"),
        ("imp_raises:app", "importing module 'imp_raises' raised ValueError: boom"),
        (
            "imp_needs_missing:app",
            "importing module 'imp_needs_missing' raised ModuleNotFoundError: No module named 'imp_not_installed_xyz'",
        ),
        ("imp_ok:nope", "module 'imp_ok' has no attribute 'nope'"),
        ("imp_ok:Outer.nope", "module 'imp_ok' has no attribute 'Outer.nope'"),
        ("imp_pkg.sub.Nope", "module 'imp_pkg.sub' has no attribute 'Nope'"),
    ],
)
def test_error_messages(spec, message):
    """A missing module, a module raising on import and a missing attribute each have their own message."""
    assert str(error(spec)) == message


def test_syntax_error_is_a_module_that_raised():
    """A module with a syntax error is reported as raising SyntaxError, on one line."""
    message = str(error("imp_syntax:app"))
    assert message.startswith("importing module 'imp_syntax' raised SyntaxError: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    "spec, missing",
    [
        ("imp_nosuch:app", "imp_nosuch"),
        ("imp_nosuch.sub:app", "imp_nosuch"),
        ("imp_needs_missing:app", "imp_not_installed_xyz"),
        ("imp_raises:app", None),
        ("imp_ok:nope", None),
    ],
)
def test_missing_names_the_module_not_found(spec, missing):
    """`missing` names the module Python could not find, when that was the cause."""
    assert error(spec).missing == missing


@pytest.mark.parametrize("spec", ["", "mod:", ":attr", "a:b:c", "plainname", "has space:app", "mod:1attr", "a..b:c"])
def test_bad_format(spec):
    """Specs that are neither "module:attr" nor a dotted path are refused before importing."""
    assert "is not in the form 'module:attribute' or 'package.module.attribute'" in str(error(spec))


def test_not_a_string():
    """A non-string spec is a format error too."""
    assert str(error(3)) == "3 is not a string"


@pytest.mark.parametrize(
    "spec, parts",
    [("a.b:c.d", ("a.b", "c.d")), ("a.b.C", ("a.b", "C")), ("a:b", ("a", "b"))],
)
def test_split_spec(spec, parts):
    """split_spec separates module and attribute without importing anything."""
    assert split_spec(spec) == parts


def test_error_has_no_chained_traceback():
    """The error does not carry the import's traceback along as its context."""
    assert error("imp_raises:app").__suppress_context__

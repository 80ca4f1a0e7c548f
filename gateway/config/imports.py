"""Config checks that import: the application, the backend and its config keys."""

import difflib
import inspect
import sys

from gateway import importing
from gateway.config.model import MEMORY


def _redis_missing(backend, exc):
    """channels_redis itself, or a package it needs, is not installed."""
    missing = exc.missing or ""
    if missing == "channels_redis":
        return True
    redis_backend = backend.startswith(("channels_redis.", "gateway.layers.batching."))  # ours needs it too
    return bool(missing) and redis_backend and not missing.startswith("channels_redis")


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
    problems = _config_key_problems(backend, config, *_parameters(layer_class))
    # A layer of ours says what is wrong with its own values (BatchingRedisChannelLayer.config_problems).
    value_problems = getattr(layer_class, "config_problems", None)
    if not problems and isinstance(config, dict) and callable(value_problems):
        problems = [(("config", key), message) for key, message in value_problems(config)]
    return problems


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

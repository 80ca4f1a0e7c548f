"""What a channel layer's failures are called: LayerUnreachable, and one log line per error."""


class LayerUnreachable(Exception):
    """The channel layer's server cannot be reached; the message names it."""


def error_text(exc):
    """`Type: message` for a log line; redis-py 8's repr drops the message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

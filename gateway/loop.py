"""Install Twisted's asyncio reactor once, so asgiref apps and layers share its loop."""

import asyncio
import sys


class ReactorError(RuntimeError):
    """Another reactor than the asyncio one is already installed."""


def install_asyncio_reactor():
    """Install `asyncioreactor` unless it is already the reactor; idempotent."""
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor

        if reactor.__class__.__name__ != "AsyncioSelectorReactor":
            raise ReactorError(
                f"the {reactor.__class__.__name__} is installed; udpgateway needs "
                "the asyncio reactor (twistd -r asyncio, or install it first)"
            )
        return reactor
    from twisted.internet import asyncioreactor

    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor

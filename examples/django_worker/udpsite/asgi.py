"""ASGI entry point: HTTP for Django, and the udp.receive channel for the UDP consumer."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "udpsite.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the consumers are imported

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from udpsite.consumers import UDPEcho  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "channel": ChannelNameRouter({"udp.receive": UDPEcho.as_asgi()}),
})

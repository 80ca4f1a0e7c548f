"""udpgateway: UDP datagrams in and out of ASGI/Channels channel layers."""

__version__ = "0.1.0"

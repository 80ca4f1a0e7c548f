"""Listener kinds by their `type` in gateway.yaml."""

from listeners.connected import ConnectedListener
from listeners.multicast import MulticastListener
from listeners.plain import PlainListener

KINDS = {
    "plain": PlainListener,
    "connected": ConnectedListener,
    "multicast": MulticastListener,
}

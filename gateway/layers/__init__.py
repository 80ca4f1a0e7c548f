"""Channel layers: the in-memory layer, channels_redis specifics, our batching Redis layer, and LayerClient.

The batching layer lives in gateway.layers.batching (imported only when
named, since channels_redis imports Django); everything else the gateway
and the worker need is here.
"""

from gateway.layers.client import LayerClient, as_client, make_layer
from gateway.layers.memory import ChannelFull, InMemoryChannelLayer, copy_message
from gateway.layers.redis import redis_channel_layer_config

__all__ = ["ChannelFull", "InMemoryChannelLayer", "LayerClient", "as_client", "copy_message", "make_layer",
           "redis_channel_layer_config"]

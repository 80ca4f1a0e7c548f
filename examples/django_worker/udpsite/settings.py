"""Settings of a minimal Django Channels project that answers udpgateway's datagrams."""

import os

from gateway.layers import redis_channel_layer_config

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "only-for-the-udpgateway-example")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "udpsite.asgi.application"
USE_TZ = True

# The same Redis, layer, prefix and capacities as the gateway's channel_layer
# (examples/redis.yaml). BatchingRedisChannelLayer is channels_redis'
# RedisChannelLayer with one Redis round trip per batch of sends or receives;
# CHANNEL_LAYER_BACKEND=channels_redis.core.RedisChannelLayer runs the stock
# layer instead (they exchange messages both ways). redis_channel_layer_config turns each host into
# channels_redis' dict form with socket_timeout None (redis-py 8 otherwise
# breaks every blocking receive after 5 idle seconds) and one retry on a
# dropped connection (the first command on each pooled connection after a
# Redis restart).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": os.environ.get("CHANNEL_LAYER_BACKEND", "gateway.layers.batching.BatchingRedisChannelLayer"),
        "CONFIG": redis_channel_layer_config({
            "hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")],
            "channel_capacity": {"udp.receive": 10000, "udp.send.*": 10000},
            # A consumer handles one message at a time, so each reply would wait for its own Redis
            # round trip; up to 64 replies may go ahead of Redis' answer instead (README: send_ahead).
            # runworker takes each message as it comes, one receive round trip each; under load
            # (while it holds messages not answered yet) sends ahead and receives wait up to 5 ms so
            # that several share one round trip (README: linger). Only BatchingRedisChannelLayer knows
            # these keys: they are left out for the stock layer.
            **({"send_ahead": int(os.environ.get("SEND_AHEAD", "64")),
                "linger": float(os.environ.get("LINGER", "0.005"))}
               if "Batching" in os.environ.get("CHANNEL_LAYER_BACKEND", "Batching") else {}),
        }),
    },
}

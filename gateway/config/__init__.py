"""gateway.yaml: load_config(path) -> (GatewayConfig or None, problems), and the dataclasses it builds."""

from gateway.config.checker import load_config
from gateway.config.model import (
    GatewayConfig,
    LayerConfig,
    Limits,
    ListenerConfig,
    Metrics,
    Problem,
    RateLimit,
    Remote,
    errors,
)
from gateway.config.summary import describe

__all__ = [
    "GatewayConfig",
    "LayerConfig",
    "Limits",
    "ListenerConfig",
    "Metrics",
    "Problem",
    "RateLimit",
    "Remote",
    "describe",
    "errors",
    "load_config",
]

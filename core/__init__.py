"""claudemesh-gateway: connects a claudemesh mesh to chat platforms and other meshes.

The public API for plugin authors is exactly what ``__all__`` lists. In-tree
plugins import only from here, as a third-party plugin would.
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    DeliveryError,
    GatewayError,
    PluginError,
    StartupError,
    StoreUnavailable,
    Unsupported,
    WebhookAuthError,
)
from .events import (
    DeliveryFailed,
    DeliveryStatus,
    Event,
    GatewayState,
    GatewayStateChanged,
    MessageDelivered,
    MessageDropped,
    MessageQueued,
    MessageReceived,
)
from .gateway import (
    Binding,
    BindingOptions,
    Gateway,
    GatewayConfig,
    GatewayContext,
    MeshHandle,
    RateLimit,
    SubmitResult,
)
from .hookspecs import hookimpl
from .messages import Address, Attachment, Capabilities, Message, Outbound, SendResult

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Attachment",
    "Binding",
    "BindingOptions",
    "Capabilities",
    "ConfigError",
    "DeliveryError",
    "DeliveryFailed",
    "DeliveryStatus",
    "Event",
    "Gateway",
    "GatewayConfig",
    "GatewayContext",
    "GatewayError",
    "GatewayState",
    "GatewayStateChanged",
    "MeshHandle",
    "Message",
    "MessageDelivered",
    "MessageDropped",
    "MessageQueued",
    "MessageReceived",
    "Outbound",
    "PluginError",
    "RateLimit",
    "SendResult",
    "StartupError",
    "StoreUnavailable",
    "SubmitResult",
    "Unsupported",
    "WebhookAuthError",
    "__version__",
    "hookimpl",
]

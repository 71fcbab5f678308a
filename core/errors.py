"""Exception hierarchy. User-facing errors carry a one-line ``human_message``."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "GatewayError",
    "MeshError",
    "MeshTerminalError",
    "MeshTimeout",
    "PluginError",
    "StartupError",
    "StoreUnavailable",
    "Unsupported",
    "WebhookAuthError",
]


class GatewayError(Exception):
    exit_code = 1

    @property
    def human_message(self) -> str:
        return str(self)


class ConfigError(GatewayError):
    """Bad configuration. ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class PluginError(GatewayError):
    exit_code = 3


class StartupError(GatewayError):
    exit_code = 4


class StoreUnavailable(GatewayError):
    """The store cannot write right now (disk full, I/O error, read-only or locked database):
    nothing of this write was committed. Answer the source "retry later" (HTTP 503, leave the row
    unacknowledged); the store logs the outage itself, rate-limited, and ``/-/ready`` reports it,
    so callers need not log each refusal."""


class WebhookAuthError(GatewayError):
    """A webhook failed its signature check: answer 401/403, enqueue nothing."""


class DeliveryError(GatewayError):
    """A send failed.

    ``permanent`` sends the item to dead letters; otherwise the core retries with
    backoff, waiting at least ``retry_after`` seconds, for this destination only.
    Never put a URL or secret in the message.
    """

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class Unsupported(DeliveryError):
    def __init__(self, message: str):
        super().__init__(message, permanent=True)


class MeshError(GatewayError):
    pass


class MeshTerminalError(MeshError):
    """The broker refused us for good (bad signature, revoked, kicked...): stop, alert."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class MeshTimeout(MeshError):
    pass

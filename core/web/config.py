"""``[admin]`` and ``[health]`` settings for the /-/ endpoints."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

__all__ = ["AdminConfig", "HealthConfig"]


class AdminConfig(BaseModel):
    """Admin API and dashboard access.

    Tokens are JWTs with ``exp`` required and ``aud`` checked: HS256 with
    ``jwt_secret``, or EdDSA verified with ``jwt_public_key`` (PEM text or a path
    to a PEM file; mint those tokens with your own private key). With neither
    set the admin API is disabled (every call answers 401).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    audience: str = "claudemesh-gateway"
    issuer: str | None = None
    allow_remote: bool = False  # admin API and dashboard answer loopback clients only unless true
    leeway_s: float = 5.0

    @field_validator("jwt_secret")
    @classmethod
    def _secret_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 32:
            raise ValueError("jwt_secret must be at least 32 characters (HS256 key)")
        return v

    @model_validator(mode="after")
    def _one_key(self) -> AdminConfig:
        if self.jwt_secret is not None and self.jwt_public_key is not None:
            raise ValueError("set either jwt_secret (HS256) or jwt_public_key (EdDSA), not both")
        return self

    def public_key_pem(self) -> str | None:
        if self.jwt_public_key is None:
            return None
        text = self.jwt_public_key.strip()
        if text.startswith("-----BEGIN"):
            return text
        return Path(text).expanduser().read_text()

    @property
    def enabled(self) -> bool:
        return self.jwt_secret is not None or self.jwt_public_key is not None


class HealthConfig(BaseModel):
    """Readiness bounds: when is a connected component considered silently stalled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stall_after_s: float = 60.0  # queued work but no delivery attempt completed for this long
    poll_stall_after_s: float = 60.0  # a watched topic poller with no completed poll for this long

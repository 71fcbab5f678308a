"""``[admin]`` and ``[health]`` settings for the /-/ endpoints."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from ..confcheck import expand_path, read_regular_file

__all__ = ["MAX_LEEWAY_S", "AdminConfig", "HealthConfig"]

#: the most clock skew a token's ``exp``/``nbf`` check forgives (seconds)
MAX_LEEWAY_S = 300.0
#: a PEM public key is a few hundred bytes; a file larger than this is not one
_PEM_MAX_BYTES = 64 * 1024


class AdminConfig(BaseModel):
    """Admin API and dashboard access.

    Tokens are JWTs with ``exp`` required and ``aud`` checked: HS256 with
    ``jwt_secret``, or EdDSA verified with ``jwt_public_key`` (PEM text or a path
    to a PEM file; mint those tokens with your own private key). With neither
    set the admin API is disabled (every call answers 401). The public key is read and
    checked when the configuration is validated (``check``, startup, reload), not per request.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    audience: str = "claudemesh-gateway"
    issuer: str | None = None
    allow_remote: bool = False  # admin API and dashboard answer loopback clients only unless true
    leeway_s: float = Field(5.0, ge=0, le=MAX_LEEWAY_S, allow_inf_nan=False)

    _public_key: Any = PrivateAttr(default=None)  # the loaded Ed25519/Ed448 key (jwt_public_key)
    _public_pem: str | None = PrivateAttr(default=None)

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
        if self.jwt_public_key is not None:
            self._public_pem, self._public_key = _load_public_key(self.jwt_public_key)
        return self

    def public_key_pem(self) -> str | None:
        """The EdDSA verification key as PEM text (read and checked at validation)."""
        return self._public_pem

    def public_key(self) -> Any:
        """The loaded EdDSA verification key object, or None without ``jwt_public_key``."""
        return self._public_key

    @property
    def enabled(self) -> bool:
        return self.jwt_secret is not None or self.jwt_public_key is not None


def _load_public_key(value: str) -> tuple[str, Any]:
    """``jwt_public_key`` (PEM text, or a path to a PEM file) -> (PEM text, Ed25519/Ed448 key).
    ValueError with one clear reason; never quotes the file's content."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        pem, where = text, "jwt_public_key"
    else:
        try:
            path = expand_path(text)
        except ValueError as exc:
            raise ValueError(f"jwt_public_key: {exc}") from None
        try:
            raw = read_regular_file(path, max_bytes=_PEM_MAX_BYTES, what="jwt_public_key file")
        except FileNotFoundError:
            raise ValueError(f"jwt_public_key file {path} does not exist (give a PEM file's path or the PEM "
                             "text)") from None
        try:
            pem = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"jwt_public_key file {path} is not a PEM public key") from None
        where = f"jwt_public_key file {path}"
    try:
        key = load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ValueError(f"{where} is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    except Exception as exc:  # noqa: BLE001  (cryptography reports an unsupported algorithm in several ways)
        raise ValueError(f"{where} could not be loaded ({type(exc).__name__})") from None
    if not isinstance(key, (Ed25519PublicKey, Ed448PublicKey)):  # pydantic reports ValueError, not TypeError
        raise ValueError(f"{where} is not an Ed25519 key (EdDSA); for a shared secret use jwt_secret")  # noqa: TRY004
    return pem, key


class HealthConfig(BaseModel):
    """Readiness bounds: when is a connected component considered silently stalled."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    stall_after_s: float = Field(60.0, gt=0)  # queued work but no delivery attempt completed for this long
    poll_stall_after_s: float = Field(60.0, gt=0)  # a watched topic poller with no completed poll for this long

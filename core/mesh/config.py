"""``[mesh.<name>]``: one mesh the gateway is a peer of (mesh-protocol.md A.1).

Every problem is one clear line (``mesh.<name>.<key>: <what is wrong>``); secrets are
``SecretStr`` and never appear in an error. The member keypair is checked here, once,
so a typo in ``secret_key`` fails ``claudemesh-gateway check`` rather than the first hello.
"""

from __future__ import annotations

import base64
import binascii
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from ..confcheck import check_path, read_regular_file
from .crypto import KeyPair

__all__ = ["PLACEHOLDER", "PRODUCTION_BROKER_HOST", "PRODUCTION_REST_URL", "GroupConfig", "MeshConfig", "RestConfig",
           "TopicKeyConfig", "decode_root_key", "read_key_file"]

#: the hosted broker, and the web app that serves its REST ``/api/v1`` (spec A.2, A.13)
PRODUCTION_BROKER_HOST = "ic.claudemesh.com"
PRODUCTION_REST_URL = "https://claudemesh.com"
Encryption = Literal["auto", "hkdf", "plaintext"]

PLACEHOLDER = "CHANGE_ME"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_B64URL_43 = re.compile(r"^[A-Za-z0-9_-]{43}$")
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def _no_placeholder(value: str, what: str, hint: str) -> None:
    if PLACEHOLDER in value:
        raise ValueError(f"placeholder {PLACEHOLDER} must be replaced with the {what} ({hint})")


def decode_root_key(text: str) -> bytes:
    """32 bytes from a 43-char unpadded base64url key (the mesh root key format, A.1)."""
    text = text.strip()
    if not _B64URL_43.match(text):
        raise ValueError("must be 43 characters of unpadded base64url (32 bytes)")
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex already guards this
        raise ValueError("is not valid base64url") from exc
    if len(raw) != 32:  # pragma: no cover - 43 chars always decode to 32 bytes
        raise ValueError("must decode to 32 bytes")
    return raw


def _check_secret_hex(text: str) -> KeyPair:
    cleaned = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{128}", cleaned):
        raise ValueError("must be 128 hex chars (libsodium seed||pubkey) or a 64-hex seed")
    try:
        return KeyPair.from_secret_hex(cleaned)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


#: a member key file holds one hex line (and maybe comments); anything bigger is not one
KEY_FILE_MAX_BYTES = 64 * 1024


def read_key_file(path: Path) -> str:
    """The secret hex stored in a member key file (``#`` lines ignored). Refuses a group/world readable
    file, and anything but a regular file (a FIFO would block the reader for ever)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"key file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"key file {path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"key file {path} is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"key file {path} is readable by group/others (mode {stat.S_IMODE(st.st_mode):o}); "
                         f"run: chmod 600 {path}")
    try:
        lines = read_regular_file(path, max_bytes=KEY_FILE_MAX_BYTES, what="key file").decode("utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"key file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"key file {path} cannot be read as text") from None
    body = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if len(body) != 1:
        raise ValueError(f"key file {path} must hold exactly one hex secret line")
    return body[0]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GroupConfig(_Strict):
    """A presence group announced in the hello (``{name, role?}``)."""

    name: str = Field(min_length=1)
    role: str | None = None


class RestConfig(_Strict):
    """``[mesh.<name>.rest]``: the web app's REST ``/api/v1``, where sealed topic keys (bodyVersion 2)
    are fetched and re-sealed (spec A.13). Timer values are seconds."""

    url: str | None = None  # default: https://claudemesh.com for the hosted broker, else unset
    enabled: bool | None = None  # default: on whenever a url is known
    key_ttl: float = Field(300.0, ge=30, le=86_400)  # lifetime of the API keys minted over WS (the CLI: 5 min)
    reseal: bool = True  # seal the keys we hold for members that join later (as upstream key holders do)
    reseal_interval: float = Field(30.0, gt=0)  # pending-seals poll per topic whose key we hold
    key_retry_interval: float = Field(30.0, gt=0)  # re-ask for a key not sealed for us yet, or after an error
    request_timeout: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().rstrip("/")
        _no_placeholder(v, "web app URL", "e.g. https://claudemesh.com")
        if not v.startswith(("http://", "https://")) or "?" in v or "#" in v:
            raise ValueError("must be an http(s):// base URL without query (e.g. https://claudemesh.com)")
        return v.removesuffix("/api/v1")


class TopicKeyConfig(_Strict):
    """``[mesh.<name>.topics.<topic name>]``: how that topic's bodies are encrypted (A.13, A.13a).

    ``auto``: bodyVersion 2 (the broker-sealed random topic key) where the topic has one and REST is
    configured, bodyVersion 1 where the topic is unencrypted. ``hkdf``: our bodyVersion 3.
    ``plaintext``: bodyVersion 1 always. Unset: ``hkdf`` when the table sets ``key_secret`` (an HKDF
    input, so v3 is what it is for), else the mesh's ``default_encryption``."""

    encryption: Encryption | None = None
    epoch: int = Field(0, ge=0)
    accept_epochs: list[int] = []  # older epochs still decrypted after a rotation
    key_secret: SecretStr | None = None  # a separate HKDF input key (43-char b64url), instead of the root key

    @field_validator("accept_epochs")
    @classmethod
    def _epochs(cls, v: list[int]) -> list[int]:
        if any(e < 0 for e in v):
            raise ValueError("epochs are integers >= 0")
        return sorted(set(v), reverse=True)

    @field_validator("key_secret")
    @classmethod
    def _key_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            _no_placeholder(v.get_secret_value(), "topic key secret", "43-char base64url, e.g. secrets.token_urlsafe(32)")
            decode_root_key(v.get_secret_value())
        return v

    @model_validator(mode="after")
    def _current_not_accepted(self) -> TopicKeyConfig:
        if self.epoch in self.accept_epochs:
            raise ValueError(f"accept_epochs must not contain the current epoch {self.epoch}")
        return self


class MeshConfig(_Strict):
    """One ``[mesh.<name>]`` table. Timer values are seconds."""

    broker_url: str
    mesh_id: str
    member_id: str
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    pubkey: str | None = None
    root_key: SecretStr | None = None
    key_secret: SecretStr | None = None  # mesh-wide separate HKDF input key (overrides root_key for topics)
    display_name: str = "gateway"
    handshake: Literal["session", "member"] = "session"
    groups: list[GroupConfig] = []
    cwd: str = "/srv/claudemesh-gateway"
    hostname: str | None = None

    # timers
    request_timeout: float = Field(10.0, gt=0)
    hello_timeout: float = Field(10.0, gt=0)
    ack_timeout: float = Field(15.0, gt=0)
    backoff: list[float] = [1, 2, 4, 8, 16, 30]
    backoff_jitter: float = Field(0.2, ge=0, le=1)
    capacity_backoff: float = Field(60.0, ge=0)
    ping_interval: float = Field(30.0, gt=0)
    idle_timeout: float = Field(75.0, gt=0)
    roster_refresh: float = Field(30.0, gt=0)
    post_reattach_redrain: bool = True
    reattach_redrain_delay: float = Field(31.0, ge=0)

    # sending
    rate_burst: int = Field(10, ge=1)
    rate_per_minute: float = Field(60.0, gt=0)
    max_plaintext_bytes: int = Field(45_000, gt=0, le=60_000)
    dm_retry_window: float = Field(600.0, ge=0)
    default_priority: Literal["now", "next", "low"] = "next"

    # topics
    topic_poll_interval: float = Field(1.0, gt=0)  # while a topic is active
    topic_poll_idle_interval: float = Field(1.5, gt=0)  # ceiling once it is quiet (idle ingest p99 < 2 s)
    topic_poll_budget: float = Field(10.0, gt=0)  # topic_history requests/s per mesh, shared by its topics
    topic_page_size: int = Field(50, ge=1, le=200)
    topic_backfill: int = Field(0, ge=0)  # rows delivered on the very first poll of a topic
    topic_max_backfill: int = Field(10_000, ge=1)  # cap on rows recovered after a long downtime
    default_encryption: Encryption = "auto"  # "hkdf" when unset and the mesh sets key_secret
    topics: dict[str, TopicKeyConfig] = {}
    rest: RestConfig = RestConfig()

    _member: KeyPair | None = PrivateAttr(default=None)

    # -- field checks ----------------------------------------------------------------------------
    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        v = v.strip()
        _no_placeholder(v, "broker WebSocket URL", "e.g. wss://ic.claudemesh.com/ws")
        if not v.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss:// (e.g. wss://ic.claudemesh.com/ws)")
        if not v.endswith("/ws") or "?" in v or "#" in v:
            raise ValueError("must end with the path /ws and carry no query string")
        return v

    @field_validator("mesh_id", "member_id")
    @classmethod
    def _ident(cls, v: str, info: Any) -> str:
        v = v.strip()
        what = "mesh id (32 chars, not the slug)" if info.field_name == "mesh_id" else "member id from /join"
        _no_placeholder(v, what, "claudemesh-gateway enroll prints it")
        if not v or not _ID.match(v):
            raise ValueError(f"must be the {what}: letters, digits, - and _ only")
        return v

    @field_validator("secret_key_file")
    @classmethod
    def _key_path(cls, v: Path | None) -> Path | None:
        return check_path(v)

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            _no_placeholder(v.get_secret_value(), "member secret key", "claudemesh-gateway keygen")
            _check_secret_hex(v.get_secret_value())
        return v

    @field_validator("pubkey")
    @classmethod
    def _pubkey(cls, v: str | None) -> str | None:
        if v is not None:
            _no_placeholder(v, "member public key", "claudemesh-gateway keygen")
            if not _HEX64.match(v):
                raise ValueError("must be 64 lowercase hex chars")
        return v

    @field_validator("root_key", "key_secret")
    @classmethod
    def _root_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            _no_placeholder(v.get_secret_value(), "mesh root key", "from the v1 invite; enroll prints it")
            decode_root_key(v.get_secret_value())
        return v

    @field_validator("groups", mode="before")
    @classmethod
    def _groups(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": g} if isinstance(g, str) else g for g in v]
        return v

    @field_validator("backoff")
    @classmethod
    def _backoff(cls, v: list[float]) -> list[float]:
        if not v or any(x < 0 for x in v):
            raise ValueError("must be a non-empty list of delays >= 0 (seconds)")
        return v

    @field_validator("display_name", "cwd")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _identity(self) -> MeshConfig:
        if self.secret_key is not None and self.secret_key_file is not None:
            raise ValueError("set either secret_key or secret_key_file, not both")
        if self.secret_key is not None:
            pair = _check_secret_hex(self.secret_key.get_secret_value())
        elif self.secret_key_file is not None:
            pair = _check_secret_hex(read_key_file(self.secret_key_file.expanduser()))
        else:
            raise ValueError("secret_key or secret_key_file is required (the member's ed25519 secret)")
        if self.pubkey is not None and self.pubkey != pair.public_hex:
            raise ValueError("pubkey does not match the public key of secret_key (wrong key for this member?)")
        if self.topic_poll_idle_interval < self.topic_poll_interval:
            raise ValueError("topic_poll_idle_interval must be >= topic_poll_interval")
        if self.rest.enabled is True and self.rest_url is None:
            raise ValueError("rest.enabled = true needs rest.url (the web app serving /api/v1) for a broker "
                             f"other than {PRODUCTION_BROKER_HOST}")
        self._member = pair
        return self

    # -- derived values ------------------------------------------------------------------------------
    def secret_values(self) -> tuple[str, ...]:
        """Secrets held outside SecretStr fields (a key read from ``secret_key_file``), in every form
        a log line could show them, for the redaction filter (``settings.iter_secrets``)."""
        if self._member is None:
            return ()
        full = self._member.secret_hex
        return (full, full[:64])

    def member_keypair(self) -> KeyPair:
        """The member's ed25519 keypair (loaded and checked at validation)."""
        assert self._member is not None
        return self._member

    @property
    def member_pubkey(self) -> str:
        return self.member_keypair().public_hex

    @property
    def rest_url(self) -> str | None:
        """The web app REST base (``rest.url``; https://claudemesh.com for the hosted broker), or None
        when REST is not configured (disabled, or a self-hosted broker without ``rest.url``)."""
        if self.rest.enabled is False:
            return None
        if self.rest.url is not None:
            return self.rest.url
        host = self.broker_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        if host == PRODUCTION_BROKER_HOST:
            return PRODUCTION_REST_URL
        return None

    @property
    def http_url(self) -> str:
        """The broker's HTTP base (same host, http(s), without ``/ws``)."""
        return http_url_for(self.broker_url)

    @property
    def mesh_encryption(self) -> str:
        """``default_encryption``, or ``hkdf`` when it is not set and a mesh-wide ``key_secret`` is."""
        if "default_encryption" not in self.model_fields_set and self.key_secret is not None:
            return "hkdf"
        return self.default_encryption

    def topic_settings(self, topic_name: str | None, topic_id: str | None = None) -> TopicKeyConfig:
        """The per-topic key settings (by name, then by id), else the mesh defaults; ``encryption``
        is always resolved (see :class:`TopicKeyConfig`)."""
        for key in (topic_name, topic_id):
            if key and key in self.topics:
                entry = self.topics[key]
                if entry.encryption is not None:
                    return entry
                mode = "hkdf" if entry.key_secret is not None else self.mesh_encryption
                return entry.model_copy(update={"encryption": mode})
        return TopicKeyConfig(encryption=self.mesh_encryption)

    def __repr_args__(self):  # keep reprs short; secrets are SecretStr anyway
        for k, v in super().__repr_args__():
            if k in ("broker_url", "mesh_id", "member_id", "handshake", "display_name"):
                yield k, v


def http_url_for(broker_url: str) -> str:
    """``wss://h:p/ws`` -> ``https://h:p``; ``ws://`` -> ``http://``."""
    base = broker_url.removesuffix("/ws")
    if base.startswith("wss://"):
        return "https://" + base[len("wss://"):]
    if base.startswith("ws://"):
        return "http://" + base[len("ws://"):]
    return base

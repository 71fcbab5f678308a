"""``[store]``: which backend holds the durable state.

``backend = "sqlite"`` (default): one file at ``[server] store_path``, one gateway process.
``backend = "postgres"``: a PostgreSQL database shared by every replica; ``dsn`` (a secret) or
``dsn_file`` (a file holding the DSN, mode 0600) names it.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

__all__ = ["StoreConfig", "read_dsn_file"]


def read_dsn_file(path: Path) -> str:
    """The DSN stored in ``path`` (``#`` lines and blank lines ignored). Refuses a group/world readable file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"DSN file {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"DSN file {path} cannot be read ({exc.strerror})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"DSN file {path} is readable by group/others (mode {stat.S_IMODE(st.st_mode):o}); "
                         f"run: chmod 600 {path}")
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise ValueError(f"DSN file {path} cannot be read as text") from None
    body = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if len(body) != 1:
        raise ValueError(f"DSN file {path} must hold exactly one DSN line")
    return body[0]


def _dsn_shape(dsn: str) -> None:
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise ValueError("dsn must be a postgresql:// URL (postgresql://user:password@host:5432/database)")


class StoreConfig(BaseModel):
    """``[store]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["sqlite", "postgres"] = "sqlite"
    dsn: SecretStr | None = None
    dsn_file: Path | None = None
    pool_size: int = Field(8, ge=2, le=200)  # PostgreSQL connections per replica
    connect_timeout: float = Field(10.0, gt=0)
    # several replicas (postgres): this replica's stable name (default: the host name); it keys the
    # replica's own mesh session identity, so two replicas on one host need different names
    replica_id: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    lease_ttl: float = Field(15.0, ge=1, le=600)  # seconds until another replica takes over a lease
    _dsn: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> StoreConfig:
        if self.dsn is not None and self.dsn_file is not None:
            raise ValueError("set either dsn or dsn_file, not both")
        if self.backend == "sqlite":
            if self.dsn is not None or self.dsn_file is not None:
                raise ValueError('dsn/dsn_file are for backend = "postgres"; the SQLite file is [server] store_path')
            return self
        if self.dsn is not None:
            dsn = self.dsn.get_secret_value().strip()
        elif self.dsn_file is not None:
            dsn = read_dsn_file(self.dsn_file.expanduser())
        else:
            raise ValueError('backend = "postgres" needs dsn or dsn_file')
        _dsn_shape(dsn)
        self._dsn = dsn
        return self

    def dsn_value(self) -> str:
        """The DSN (from ``dsn`` or ``dsn_file``); only for ``backend = "postgres"``."""
        if self._dsn is None:
            raise ValueError('no DSN: [store] backend is not "postgres"')
        return self._dsn

    def secret_values(self) -> tuple[str, ...]:
        """The DSN and its password in every form a log line could show, for the redaction filter
        (``settings.iter_secrets``), also when the DSN was read from ``dsn_file``."""
        if self._dsn is None:
            return ()
        from .postgres import dsn_secrets

        return dsn_secrets(self._dsn)

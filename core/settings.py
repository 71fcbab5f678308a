"""Operator configuration: one TOML file (plus ``include``\\ d files) and ``CLAUDEMESH_*`` overrides.

Precedence, highest first: explicit arguments > environment > TOML. The
environment uses the prefix ``CLAUDEMESH_`` and ``__`` for nesting, and deep-merges
into tables: ``CLAUDEMESH_GATEWAYS__TELEGRAM__TOKEN=...`` replaces only ``token`` in
``[gateways.telegram]``. ``include = [...]`` lists more TOML files (relative to the
config file) merged *under* the main file, so the main file wins.

Every problem is reported as one ``path.to.key: message`` line in a
:class:`ConfigError`: unknown keys, malformed values and leftover ``CHANGE_ME``
placeholders anywhere in the merged configuration (gateway tables included).

Relative paths (``server.state_dir``, ``server.store_path``,
``dev_broker.state_dir``) are resolved against the config file's directory, so
the result does not depend on the working directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from .confcheck import check_path, expand_path, one_line, read_regular_file
from .delivery.config import DeliveryConfig
from .errors import ConfigError
from .logconfig import url_password
from .mesh.config import MeshConfig
from .otel import OtelSettings
from .routing.config import RouteConfig
from .store.config import StoreConfig
from .store.retention import RetentionConfig
from .trace import TraceSettings
from .web.config import AdminConfig, HealthConfig

__all__ = [
    "PLACEHOLDER",
    "RESTART_ONLY",
    "BootstrapSettings",
    "DevBrokerSettings",
    "LogSettings",
    "PluginSettings",
    "ServerSettings",
    "Settings",
    "diff_settings",
    "iter_secrets",
    "load_bootstrap_settings",
    "load_settings",
    "placeholder_problems",
    "read_toml_with_includes",
    "validation_problems",
]

log = logging.getLogger(__name__)

PLACEHOLDER = "CHANGE_ME"
ENV_PREFIX = "CLAUDEMESH_"
#: tables and lists nest at most this deep (a config file, an include or a JSON environment override)
MAX_DEPTH = 32
#: a config or include file larger than this is refused before it is parsed
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# -- our own tables --------------------------------------------------------------------------------------------
class ServerSettings(_Strict):
    """``[server]``: the HTTP listener and where state lives."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = None  # the URL vendors reach us at (Twilio signatures are computed over it)
    shutdown_timeout: float = Field(10.0, ge=0)
    state_dir: Path = Path("var")
    store_path: Path | None = None  # default: <state_dir>/gateway.sqlite3
    # Host names the dashboard, admin API and dev sink answer besides IP addresses, localhost, `host`
    # and public_url's host (DNS rebinding guard): "name", ".domain" (and its subdomains), "*" (any)
    allowed_hosts: list[str] = []

    @field_validator("state_dir", "store_path")
    @classmethod
    def _path(cls, v: Path | None) -> Path | None:
        return check_path(v)

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @property
    def store(self) -> Path:
        return self.store_path if self.store_path is not None else self.state_dir / "gateway.sqlite3"


class DevBrokerSettings(_Strict):
    """``[dev_broker]``: the loopback broker emulation (development only, never production)."""

    embedded: bool = False
    host: str = "127.0.0.1"
    port: int = Field(7900, ge=0, le=65535)
    state_dir: Path = Path("var/devbroker")

    @field_validator("state_dir")
    @classmethod
    def _path(cls, v: Path) -> Path:
        return expand_path(v)


class PluginSettings(_Strict):
    """``[plugins]``: ``disable`` takes plugin names as ``claudemesh-gateway plugins`` lists them."""

    disable: list[str] = []


class LogSettings(_Strict):
    """``[log]``. Message bodies are only ever logged at DEBUG."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json"] = "text"
    # third-party libraries (aiosqlite, aiohttp, asyncio, telegram, slack_sdk, twilio...) log at this level
    # or above `level`: their DEBUG lines hold SQL arguments (secret keys), request bodies, phone numbers
    library_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("level", "library_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class _FileSettings(BaseSettings):
    """Where both configuration models read from: keyword arguments, then the environment
    (``CLAUDEMESH_*``), then the TOML file and its includes."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), _TomlIncludeSource(settings_cls))


class Settings(_FileSettings):
    """The whole configuration. Gateway tables stay raw until the plugins are loaded
    (see :func:`claudemesh_gateway.app.validate_gateways`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, allow_inf_nan=False,
        nested_model_default_partial_update=False,
    )

    server: ServerSettings = ServerSettings()
    dev_broker: DevBrokerSettings = DevBrokerSettings()
    include: list[str] = []
    mesh: dict[str, MeshConfig] = {}
    plugins: PluginSettings = PluginSettings()
    gateways: dict[str, dict[str, Any]] = {}
    routes: list[RouteConfig] = []
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    log: LogSettings = LogSettings()
    admin: AdminConfig = Field(default_factory=AdminConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    trace: TraceSettings = Field(default_factory=TraceSettings)
    otel: OtelSettings = Field(default_factory=OtelSettings)

    # where the values came from (set by load_settings; not configuration)
    config_path: Path | None = Field(None, exclude=True)
    config_file: ClassVar[Path | None] = None  # the TOML file the source reads (set on a subclass)
    includes_optional: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _trace_retention_alias(cls, data: Any) -> Any:
        """``[trace] retention_days`` is an alias of ``[retention] trace_days`` (one pruning system):
        it applies when ``trace_days`` is not set; both set to different values is an error."""
        if not isinstance(data, dict):
            return data
        trace, retention = data.get("trace"), data.get("retention")
        if not isinstance(trace, dict) or "retention_days" not in trace:
            return data
        if retention is None:
            retention = {}
        if not isinstance(retention, dict):
            return data  # a RetentionConfig instance (or garbage for the field's own error)
        alias = trace["retention_days"]
        if "trace_days" in retention:
            try:
                same = float(retention["trace_days"]) == float(alias)
            except (TypeError, ValueError):
                return data  # the field's own validation names the bad value
            if not same:
                raise ValueError("trace.retention_days and retention.trace_days disagree: set only "
                                 "retention.trace_days")
            return data
        return {**data, "retention": {**retention, "trace_days": alias}}

    @field_validator("gateways")
    @classmethod
    def _gateway_tables(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, table in v.items():
            if not name or "/" in name or one_line(name) != name:
                raise ValueError(f"{name!r}: gateway instance names may not be empty or contain '/' or control "
                                 "characters")
            kind = table.get("type", name)
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"{name}.type: must be a non-empty string")
        return v

    def secret_strings(self) -> Iterator[str]:
        """Every secret this configuration holds (:func:`iter_secrets`), for log redaction."""
        return iter_secrets(self)

    def gateway_kind(self, name: str) -> str:
        """The gateway kind of instance ``name`` (``type`` key, defaulting to the table name)."""
        return str(self.gateways[name].get("type", name))

    def gateway_table(self, name: str) -> dict[str, Any]:
        """The instance's table without ``type``, ready for ``Gateway.Config``."""
        return {k: v for k, v in self.gateways[name].items() if k != "type"}

    def reread(self) -> Settings:
        """The config file this was loaded from, read again as a reload reads it (includes and
        ``CLAUDEMESH_*`` overrides too). ConfigError when it does not validate, or when these
        settings did not come from a file."""
        if self.config_path is None:
            raise ConfigError("this gateway was not started from a config file")
        return load_settings(self.config_path)

    def in_effect(self, started: Settings) -> Settings:
        """These (reloaded) settings with the :data:`RESTART_ONLY` tables as ``started`` had them: what
        the process runs with, since a reload does not apply those tables."""
        return self.model_copy(update={t: getattr(started, t) for t in RESTART_ONLY})

    def diff(self, new: Settings, *, gateway_models: Mapping[str, Iterable[BaseModel]] | None = None
             ) -> list[dict[str, Any]]:
        """What changes from these settings to ``new``, secrets masked (:func:`diff_settings`)."""
        return diff_settings(self, new, gateway_models=gateway_models)


# -- TOML with includes ------------------------------------------------------------------------------------------
def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` wins; tables merge recursively; lists and scalars are replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def nesting_depth(value: Any) -> int:
    """How deep tables and lists nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        stack.extend((child, depth) for child in children)
    return deepest


def _too_deep(label: str, where: str) -> ConfigError:
    return ConfigError(f"{label}: tables and lists nest more than {MAX_DEPTH} levels deep ({where})")


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        raw = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES, what="file")
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found: {path}") from None
    except ValueError as exc:  # not a regular file (a FIFO would block), too large, unreadable
        raise ConfigError(f"{label}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text ({path}, byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML ({path}): {exc}") from None
    except RecursionError:
        raise _too_deep(label, str(path)) from None
    if nesting_depth(data) > MAX_DEPTH:
        raise _too_deep(label, str(path))
    return data


def read_toml_with_includes(path: Path, *, allow_missing: bool = False) -> dict[str, Any]:
    """The config file deep-merged over its ``include`` files (one level; includes may not include).

    ``allow_missing``: skip include files that do not exist yet (the embedded dev broker writes
    its ``meshes.toml`` on first start)."""
    path = Path(path)
    data = _read_toml(path, "config")
    includes = data.get("include", [])
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError("include: must be a list of file paths")
    merged: dict[str, Any] = {}
    problems: list[str] = []
    for i, inc in enumerate(includes):
        try:
            inc_path = expand_path(inc)
        except ValueError as exc:  # a NUL character, ~nosuchuser
            problems.append(f"include[{i}]: {exc}")
            continue
        if not inc_path.is_absolute():
            inc_path = path.parent / inc_path
        if allow_missing and not inc_path.exists():
            log.debug("include %s does not exist yet; skipped", inc_path)
            continue
        try:
            extra = _read_toml(inc_path, f"include[{i}]")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if "include" in extra:
            problems.append(f"include[{i}]: included files may not have their own include ({inc_path})")
            continue
        merged = deep_merge(merged, extra)
    if problems:
        raise ConfigError(problems)
    return deep_merge(merged, data)


class _EnvOverrideError(ValueError):
    """A ``CLAUDEMESH_*`` value that had to be JSON and is not (or nests too deeply)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key, self.reason = key, reason


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, with a malformed JSON override reported as one
    ``CLAUDEMESH_<NAME>: ...`` config error line instead of a ``SettingsError`` traceback."""

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            decoded = super().decode_complex_value(field_name, field, value)
        except json.JSONDecodeError as exc:  # the reason names a position, never the value
            raise _EnvOverrideError(field_name, f"not valid JSON ({exc.msg} at line {exc.lineno} column "
                                                f"{exc.colno})") from None
        except RecursionError:
            raise _EnvOverrideError(field_name, f"nests more than {MAX_DEPTH} levels deep") from None
        except ValueError as exc:
            raise _EnvOverrideError(field_name, f"not valid JSON ({type(exc).__name__})") from None
        if nesting_depth(decoded) > MAX_DEPTH:
            raise _EnvOverrideError(field_name, f"nests more than {MAX_DEPTH} levels deep")
        return decoded

    def __call__(self) -> dict[str, Any]:
        try:
            return super().__call__()
        except SettingsError as exc:
            raise ConfigError(_env_problem(exc)) from None


def _env_problem(exc: SettingsError) -> str:
    """``CLAUDEMESH_PLUGINS__DISABLE: not valid JSON (...)`` for a SettingsError of the env source."""
    m = re.search(r'field "([^"]+)"', str(exc))
    field = (m.group(1) if m else "").upper()
    top = ENV_PREFIX + (field or "*")
    cause = exc.__cause__
    if not isinstance(cause, _EnvOverrideError):
        return f"{top}: environment override could not be read"
    key = cause.key.upper()
    names = [n for n in os.environ
             if (n.upper() == top and key == field)
             or (n.upper().startswith(top + "__") and n.upper().rsplit("__", 1)[-1] == key)]
    bad = [n for n in names if not _json_ok(os.environ[n])]
    return f"{min(bad or names or [top])}: {cause.reason}"


def _json_ok(text: str) -> bool:
    try:
        return nesting_depth(json.loads(text)) <= MAX_DEPTH
    except (ValueError, RecursionError):
        return False


class _TomlIncludeSource(PydanticBaseSettingsSource):
    """Lowest-precedence source: the TOML file named by ``config_file`` plus its includes."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = getattr(settings_cls, "config_file", None)
        missing_ok = bool(getattr(settings_cls, "includes_optional", False))
        self._data = read_toml_with_includes(Path(path), allow_missing=missing_ok) if path else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


# -- problem reporting --------------------------------------------------------------------------------------------
def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + one_line(str(part))
    return out or "(top level)"


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``path.to.key: message`` line per pydantic error."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = list(err.get("loc", ()))
        # drop pydantic's union/function tags such as 'function-after[...]'
        loc = [p for p in loc if not (isinstance(p, str) and ("[" in p and p.endswith("]")))]
        where = _loc(loc)
        if prefix:
            where = f"{prefix}.{where}" if where != "(top level)" else prefix
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = str(err.get("msg", "invalid value"))
            for noise in ("Value error, ", "Assertion failed, "):
                msg = msg.replace(noise, "")
        lines.append(f"{where}: {msg}")
    return lines


#: tables a reload validates but only a restart applies (the reload reports them in ``restart_required``)
RESTART_ONLY = ("server", "dev_broker", "plugins", "log", "admin", "health", "delivery", "retention", "store", "trace",
                "otel")


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf of plain data or pydantic models; SecretStr stays wrapped."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            if name == "config_path":
                continue
            yield from _walk(getattr(value, name), f"{path}.{name}" if path else name)
        extra = value.__pydantic_extra__ or {}
        for name, sub in extra.items():
            yield from _walk(sub, f"{path}.{one_line(name)}" if path else one_line(name))
    elif isinstance(value, Mapping):
        for key, sub in value.items():
            yield from _walk(sub, f"{path}.{one_line(str(key))}" if path else one_line(str(key)))
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            yield from _walk(sub, f"{path}[{i}]")
    else:
        yield path, value


def placeholder_problems(data: Any) -> list[str]:
    """One line per value still containing ``CHANGE_ME`` (secrets included)."""
    problems = []
    for path, leaf in _walk(data, ""):
        text = leaf.get_secret_value() if isinstance(leaf, (SecretStr, SecretBytes)) else leaf
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if isinstance(text, str) and PLACEHOLDER in text:
            problems.append(f"{path}: placeholder value {PLACEHOLDER} must be replaced")
    return problems


_SECRET_NAME_PARTS = ("secret", "token", "password", "passwd", "auth", "private", "seed", "root_key", "api_key")


def _looks_secret(path: str) -> bool:
    leaf = path.rsplit(".", 1)[-1].lower()
    if "public" in leaf or "pubkey" in leaf:
        return False
    return any(part in leaf for part in _SECRET_NAME_PARTS)


def iter_secrets(obj: Any) -> Iterator[str]:
    """Every SecretStr/SecretBytes value in ``obj``, plus string values of raw tables whose
    key names look secret (``token``, ``*_secret``, ``password``...) for tables not yet
    validated by a plugin model (gateway tables before the plugins load), plus the password
    of every URL with credentials (``https://user:password@host``: a webhook target, a DSN),
    which a log line may show without the rest of the URL."""
    for path, leaf in _walk(obj, ""):
        if isinstance(leaf, SecretStr):
            text = leaf.get_secret_value()
        elif isinstance(leaf, SecretBytes):
            text = leaf.get_secret_value().decode("utf-8", "replace")
        elif isinstance(leaf, str):
            text = leaf if _looks_secret(path) else ""
            if (password := url_password(leaf)) is not None:
                yield password
        else:
            continue
        if text:
            yield text
            if (password := url_password(text)) is not None:
                yield password
    for model in _models(obj):  # secrets a model holds outside its fields (e.g. a key read from a file)
        values = getattr(model, "secret_values", None)
        if callable(values):
            yield from values()


def _models(value: Any) -> Iterator[BaseModel]:
    if isinstance(value, BaseModel):
        yield value
        for name in type(value).model_fields:
            yield from _models(getattr(value, name))
    elif isinstance(value, Mapping):
        for sub in value.values():
            yield from _models(sub)
    elif isinstance(value, (list, tuple)):
        for sub in value:
            yield from _models(sub)


# -- what a reload would change ----------------------------------------------------------------------------------------
#: characters of a value a diff shows; longer ones are cut (a diff is for reading, not restoring)
DIFF_VALUE_MAX = 200
#: a secret shorter than this is not looked for inside other values (it would mask "1" everywhere)
_SECRET_MIN = 4
_MISSING = object()


def diff_settings(old: Any, new: Any, *, gateway_models: Mapping[str, Iterable[BaseModel]] | None = None
                  ) -> list[dict[str, Any]]:
    """Every leaf that differs between two configurations, in file order: ``{"path", "table",
    "change" (added | removed | changed), "old", "new", "secret", "applies" (reload | restart)}``.

    A secret's values are never given, only that it changed (``"secret": true``, no ``old`` /
    ``new``). Secrets are: SecretStr / SecretBytes fields, keys whose name says secret (``token``,
    ``*_secret``, ``password``...), the SecretStr fields of the gateway models in ``gateway_models``
    (``name -> models of its table``: raw gateway tables are not typed), and any value holding one of
    those secrets (a URL with its password). ``applies`` is ``restart`` for :data:`RESTART_ONLY` tables."""
    models = {name: list(ms) for name, ms in (gateway_models or {}).items()}
    secret_paths: set[str] = set()
    for name, ms in models.items():
        for m in ms:
            secret_paths.update(f"gateways.{name}.{p}" for p, leaf in _walk(m, "")
                                if isinstance(leaf, (SecretStr, SecretBytes)))
    secrets = {v for v in (*iter_secrets(old), *iter_secrets(new),
                           *(v for ms in models.values() for m in ms for v in iter_secrets(m)))
               if len(v) >= _SECRET_MIN}

    def secret(path: str, values: list[Any]) -> bool:
        if path in secret_paths or _looks_secret(path):
            return True
        for v in values:
            if isinstance(v, (SecretStr, SecretBytes)):
                return True
            text = v if isinstance(v, str) else str(v) if isinstance(v, Path) else None
            if text is not None and any(x in text for x in secrets):
                return True
        return False

    before, after = dict(_walk(old, "")), dict(_walk(new, ""))
    changes: list[dict[str, Any]] = []
    for path in [*before, *(p for p in after if p not in before)]:
        was, now = before.get(path, _MISSING), after.get(path, _MISSING)
        if was is not _MISSING and now is not _MISSING and _same(was, now):
            continue
        table = path.split(".", 1)[0].split("[", 1)[0]
        entry: dict[str, Any] = {
            "path": path, "table": table,
            "change": "added" if was is _MISSING else "removed" if now is _MISSING else "changed",
            "applies": "restart" if table in RESTART_ONLY else "reload",
            "secret": secret(path, [v for v in (was, now) if v is not _MISSING]),
        }
        if not entry["secret"]:
            if was is not _MISSING:
                entry["old"] = _shown(was)
            if now is not _MISSING:
                entry["new"] = _shown(now)
        changes.append(entry)
    return changes


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (SecretStr, SecretBytes)) and isinstance(b, (SecretStr, SecretBytes)):
        return a.get_secret_value() == b.get_secret_value()
    return type(a) is type(b) and a == b


def _shown(value: Any) -> Any:
    """A JSON value for a diff: numbers, booleans and None as they are, anything else as text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= DIFF_VALUE_MAX else text[:DIFF_VALUE_MAX] + "…"


# -- loading ---------------------------------------------------------------------------------------------------------
def _resolve(p: Path, base: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else (base / p)


def _config_file(path: str | Path) -> Path:
    """The config file named by ``-c``/``CLAUDEMESH_CONFIG``, ``~`` expanded; ConfigError unless it is a file."""
    try:
        path = expand_path(path)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    if not path.is_file():
        if path.exists():
            raise ConfigError(f"config: {path} is not a regular file")
        raise ConfigError(f"config: file not found: {path} (pass -c FILE or set CLAUDEMESH_CONFIG)")
    return path


def load_settings(
    path: str | Path, *, allow_placeholders: bool = False, allow_missing_includes: bool = False, **overrides: Any
) -> Settings:
    """Load ``path`` (+ includes) with environment overrides. ``overrides`` (init kwargs) win over both.

    Raises :class:`ConfigError` listing every problem, one line each. ``allow_missing_includes``
    is for the CLI's first pass before the embedded dev broker has written its files.
    """
    path = _config_file(path)

    class FromFile(Settings):  # config is inherited and merged; only the file changes
        config_file = path
        includes_optional = allow_missing_includes

    FromFile.__name__ = FromFile.__qualname__ = "Settings"
    try:
        settings: Settings = FromFile(**overrides)
    except ValidationError as exc:
        problems = validation_problems(exc)
        if not allow_placeholders:
            try:
                raw = read_toml_with_includes(path, allow_missing=allow_missing_includes)
                problems += [p for p in placeholder_problems(raw) if p not in problems]
            except ConfigError as inner:
                problems += inner.problems
        raise ConfigError(problems) from None
    if not allow_placeholders:
        problems = placeholder_problems(settings)
        if problems:
            raise ConfigError(problems)
    base = path.resolve().parent
    server = settings.server.model_copy(update={
        "state_dir": _resolve(settings.server.state_dir, base),
        "store_path": _resolve(settings.server.store_path, base) if settings.server.store_path else None,
    })
    broker = settings.dev_broker.model_copy(update={"state_dir": _resolve(settings.dev_broker.state_dir, base)})
    return settings.model_copy(update={"server": server, "dev_broker": broker, "config_path": path.resolve()})


class BootstrapSettings(_FileSettings):
    """The tables needed before the rest can load: where to listen, how to log, whether to start
    the embedded dev broker (which writes files the config includes). Other tables are ignored
    here and validated by :func:`load_settings` afterwards."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", frozen=True)

    server: ServerSettings = ServerSettings()
    dev_broker: DevBrokerSettings = DevBrokerSettings()
    log: LogSettings = LogSettings()
    include: list[str] = []
    config_path: Path | None = Field(None, exclude=True)
    config_file: ClassVar[Path | None] = None
    includes_optional: ClassVar[bool] = True



def load_bootstrap_settings(path: str | Path) -> BootstrapSettings:
    """``[server]``, ``[dev_broker]``, ``[log]`` and ``include`` only; missing includes are fine."""
    path = _config_file(path)

    class FromFile(BootstrapSettings):
        config_file = path

    try:
        boot = FromFile()
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from None
    base = path.resolve().parent
    server = boot.server.model_copy(update={
        "state_dir": _resolve(boot.server.state_dir, base),
        "store_path": _resolve(boot.server.store_path, base) if boot.server.store_path else None,
    })
    broker = boot.dev_broker.model_copy(update={"state_dir": _resolve(boot.dev_broker.state_dir, base)})
    return BootstrapSettings.model_construct(server=server, dev_broker=broker, log=boot.log, include=boot.include,
                                             config_path=path.resolve())


def settings_from_dict(data: Mapping[str, Any], *, allow_placeholders: bool = False) -> Settings:
    """Build Settings from a plain dict (tests, embedding). The environment still overrides."""
    try:
        settings = Settings(**dict(data))
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from None
    if not allow_placeholders:
        problems = placeholder_problems(settings)
        if problems:
            raise ConfigError(problems)
    return settings

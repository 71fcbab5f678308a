"""#8 log redaction of EACH secret type, through the real startup path: ``configure_logging(settings)``
(what ``claudemesh-gateway run`` calls) and ``create_app`` (which registers the secrets of the
validated gateway models). Every secret is then logged in a message, in %-args, inside a URL (bot
tokens live in Telegram URLs) and in an exception, in text and JSON format; none may appear.

tests/core/test_core_logging_tasks.py checks the filter with hand-registered values and
tests/core/test_core_settings.py::test_secrets_found_for_redaction only jwt_secret + a telegram token."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from claudemesh_gateway.testing import dev_mesh_tables

from .conftest import to_toml

SECRETS = {
    "telegram token": "7654321098:AAacceptanceTelegramTokenXYZ0123456789",
    "telegram webhook secret": "tg-hook-secret-acceptance-0123456789",
    "slack bot token": "xoxb-1111111111-2222222222-acceptanceBotTokenXyz",
    "slack app token": "xapp-1-A0123456789-3333333333-acceptanceapptoken",
    "slack signing secret": "8f742231b10e8888abcd99yyyzzz85a5",
    "twilio auth token": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "twilio api key secret": "acceptanceApiKeySecretValue0123456",
    "webhook secret": "acceptance-webhook-hmac-secret-0123456789",
    "admin jwt secret": "acceptance-admin-jwt-secret-0123456789-abcdef",
}


def config(tables: dict[str, Any]) -> dict[str, Any]:
    s = SECRETS
    return {
        "admin": {"jwt_secret": s["admin jwt secret"]},
        "mesh": {"dev": tables["dev"]},
        "gateways": {
            "telegram": {"token": s["telegram token"], "mode": "webhook", "webhook_secret": s["telegram webhook secret"],
                         "public_url": "https://gw.example.org"},
            "slack": {"bot_token": s["slack bot token"], "app_token": s["slack app token"],
                      "signing_secret": s["slack signing secret"], "mode": "socket"},
            "whatsapp": {"account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": s["twilio auth token"],
                         "api_key_sid": "SK0123456789abcdef0123456789abcdef",
                         "api_key_secret": s["twilio api key secret"],
                         "from_number": "whatsapp:+15550000000", "public_url": "https://gw.example.org"},
            "webhook": {"secret": s["webhook secret"]},
        },
        "routes": [{"name": "all", "mesh": "dev", "topic": "general", "binds": [
            {"gateway": "telegram", "chat": "-1001234567890"}, {"gateway": "slack", "chat": "C0123456789"},
            {"gateway": "whatsapp", "chat": "whatsapp:+15550000001"}, {"gateway": "webhook", "chat": "sink"}]}],
    }


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def emit_everything(secrets: dict[str, str]) -> None:
    log = logging.getLogger("claudemesh_gateway.acceptance")
    for kind, value in secrets.items():
        log.warning("plain %s: %s", kind, value)
        log.warning(f"f-string {kind}: {value}")
        log.warning("url: https://api.telegram.org/bot%s/getUpdates?offset=1", value)
        log.warning("structured", extra={"gateway": f"gw-{value}", "route": value})
        try:
            raise RuntimeError(f"vendor said no to {value}")
        except RuntimeError:
            log.exception("exception for %s", kind)


def start_paths(tmp_path: Path, cfg: dict[str, Any], fmt: str) -> Any:
    """load_settings -> configure_logging -> create_app, as ``claudemesh-gateway run`` does."""
    from claudemesh_gateway.app import create_app
    from claudemesh_gateway.logconfig import configure_logging
    from claudemesh_gateway.plugin_manager import make_plugin_manager
    from claudemesh_gateway.settings import load_settings

    path = tmp_path / f"gw-{fmt}.toml"
    path.write_text(to_toml({**cfg, "server": {"state_dir": str(tmp_path / "var")}, "log": {"format": fmt}}))
    settings = load_settings(path)
    configure_logging(settings)
    pm = make_plugin_manager(entry_points=False, builtins=True, disable=settings.plugins.disable)
    return create_app(settings, pm)


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_every_secret_type_is_scrubbed_from_logs(tmp_path, dev_broker, capsys, restore_logging, fmt):
    tables = dev_mesh_tables(dev_broker.state_dir)
    start_paths(tmp_path, config(tables), fmt)
    secrets = {**SECRETS, "mesh secret key": tables["dev"]["secret_key"], "mesh root key": tables["dev"]["root_key"]}
    capsys.readouterr()
    emit_everything(secrets)
    err = capsys.readouterr().err
    assert err.count("***") >= 5 * len(secrets), err[:2000]
    leaked = [kind for kind, value in secrets.items() if value in err]
    assert leaked == [], f"secrets in the {fmt} log: {leaked}"


async def test_mesh_secret_key_from_a_key_file_is_scrubbed_too(tmp_path, dev_broker, capsys, restore_logging):
    tables = dev_mesh_tables(dev_broker.state_dir)
    key_file = tmp_path / "dev.key"
    key_file.write_text(tables["dev"]["secret_key"] + "\n")
    os.chmod(key_file, 0o600)
    dev = {k: v for k, v in tables["dev"].items() if k != "secret_key"}
    dev["secret_key_file"] = str(key_file)
    cfg = config({"dev": dev})
    start_paths(tmp_path, cfg, "text")
    capsys.readouterr()
    emit_everything({"mesh secret key (file)": tables["dev"]["secret_key"]})
    err = capsys.readouterr().err
    assert tables["dev"]["secret_key"] not in err, "the member secret read from secret_key_file reached the log"

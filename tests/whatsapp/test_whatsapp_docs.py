"""docs/whatsapp.md stays true: its TOML validates, and every option is documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from claudemesh_gateway.plugins.whatsapp.config import WhatsAppBindingOptions, WhatsAppConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "whatsapp.md"


def _toml_blocks() -> list[dict]:
    text = DOC.read_text("utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/whatsapp.md has no toml example"
    return [tomllib.loads(b.replace('"CHANGE_ME"', '"AC0123456789abcdef0123456789abcdef"')) for b in blocks]


def test_doc_example_validates():
    (doc,) = _toml_blocks()
    table = dict(doc["gateways"]["whatsapp"])
    assert table.pop("type") == "whatsapp"
    cfg = WhatsAppConfig.model_validate(table)
    assert cfg.public_url == "https://gw.example.com" and cfg.mps == 80
    binds = [b for r in doc["routes"] for b in r["binds"] if b["gateway"] == "whatsapp"]
    assert binds
    for b in binds:
        opts = WhatsAppBindingOptions.model_validate(b.get("options", {}))
        assert opts.outside_window == "template" and opts.notify_status


def test_every_option_is_documented():
    text = DOC.read_text("utf-8")
    for name in (*WhatsAppConfig.model_fields, *WhatsAppBindingOptions.model_fields):
        assert f"`{name}`" in text, f"{name} is not documented in docs/whatsapp.md"
    for url in ("/gateways/<name>/inbound", "/gateways/<name>/status", "/gateways/<name>/media/<token>"):
        assert url in text

"""docs/slack.md's configuration example validates against the gateway's own models."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from claudemesh_gateway.plugins.slack.gateway import SlackGateway

DOC = (Path(__file__).resolve().parents[2] / "docs" / "slack.md").read_text()


def _config_block() -> dict:
    blocks = re.findall(r"```toml\n(.*?)```", DOC, re.DOTALL)
    assert blocks, "docs/slack.md has no toml block"
    return tomllib.loads(blocks[0].replace("CHANGE_ME", "xoxb-doc"))


def test_doc_gateway_table_and_binding_options_validate():
    doc = _config_block()
    table = dict(doc["gateways"]["slack"])
    assert table.pop("type") == "slack"
    cfg = SlackGateway.Config.model_validate(table)
    assert cfg.mode == "socket" and cfg.rate.per_channel_per_s == 1.0
    binds = [b for r in doc["routes"] for b in r["binds"] if b["gateway"] == "slack"]
    assert binds
    for b in binds:
        SlackGateway.BindingOptions.model_validate(b.get("options", {}))


def test_every_config_key_is_documented():
    documented = set(re.findall(r"^\| `([a-z_.]+)`", DOC, re.MULTILINE))
    documented |= {
        k
        for cell in re.findall(r"^\| `(rate\.[^|]+)\|", DOC, re.MULTILINE)
        for k in re.findall(r"rate\.\w+", cell)
    }
    keys = set(SlackGateway.Config.model_fields) - {"rate"}
    keys |= {f"rate.{k}" for k in SlackGateway.Config.model_fields["rate"].annotation.model_fields}
    keys |= set(SlackGateway.BindingOptions.model_fields)
    assert keys - documented == set()

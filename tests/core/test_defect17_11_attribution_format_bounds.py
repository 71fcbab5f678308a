"""Issue 17 item 11 (templates): ``attribution = "{text:>300000000}"`` passed ``check`` and then built a
~286 MB string per message. Format templates (route ``attribution``, ``[delivery]`` rate-limit
``scope``) are checked at load: known fields only, by plain name, no nested fields, a format spec valid
for text with width and precision at most MAX_FORMAT_WIDTH. A bad one is one config error line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from claudemesh_gateway import cli
from claudemesh_gateway.confcheck import MAX_FORMAT_WIDTH
from claudemesh_gateway.delivery.config import LimitSpec
from claudemesh_gateway.routing.config import RouteConfig
from claudemesh_gateway.routing.text import attribute
from pydantic import ValidationError

WEBHOOK = '[gateways.webhook]\nsecret = "defect17-webhook-secret-0123456789"\nurl = "http://127.0.0.1:9/s"\n'
ROUTE = ('[[routes]]\nname = "r"\nattribution = "{template}"\nbinds = [{{gateway = "webhook", chat = "a"}}, '
         '{{gateway = "webhook", chat = "b"}}]\n')

BAD = {
    "{text:>300000000}": "width is larger than",
    "{sender:.999999}: {text}": "precision is larger than",
    "{text:" + "9" * 5000 + "}": "width is larger than",
    "{sender:{text}}{text}": "nested fields",
    "{text:d}": "not a valid template for text values",
    "{sender:+} {text}": "not a valid template for text values",
    "{text.__class__}": "unknown field {text.__class__}",
    "{text[0]}": "unknown field {text[0]}",
    "{} {text}": "unknown field {}",
    "{sender}": "must contain {text}",
    "{text": "not a valid template",
}


@pytest.mark.parametrize(("template", "expect"), BAD.items(), ids=range(len(BAD)))
def test_bad_attribution_is_one_config_error_line(template: str, expect: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(WEBHOOK + ROUTE.format(template=template))
    code = cli.main(["-c", str(cfg), "check"])
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("claudemesh-gateway: config error: routes[0].attribution: "), lines
    assert expect in lines[0], lines
    assert "Traceback" not in err and len(lines[0]) < 400


@pytest.mark.parametrize("template", ["{sender}: {text}", f"{{sender:<{MAX_FORMAT_WIDTH}}} {{text}}",
                                      "{sender!r:^20.10} @ {origin_mesh}: {text}", "[{gateway}/{chat}] {text:.200}"])
def test_bounded_templates_still_work(template: str) -> None:
    route = RouteConfig(name="r", attribution=template, binds=[{"gateway": "w", "chat": "a"}])
    out = attribute(route.attribution or "", {"sender": "alice", "text": "hi", "gateway": "w", "chat": "a",
                                              "origin_mesh": "m"})
    assert "hi" in out and len(out) < 1000


def test_rate_limit_scope_templates_are_bounded_too() -> None:
    assert LimitSpec(scope="{gateway}:chat:{chat}", per_second=1).scope == "{gateway}:chat:{chat}"
    for scope, expect in {"{chat:>300000000}": "width is larger than", "{user}": "unknown field {user}",
                          "{chat:{lane}}": "nested fields"}.items():
        with pytest.raises(ValidationError, match=expect.replace("{", r"\{").replace("}", r"\}")):
            LimitSpec(scope=scope, per_second=1)

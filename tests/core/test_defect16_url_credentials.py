"""Issue 16 (Secrets), found by tests/acceptance/test_acceptance_16_secrets_whole_app.py: a password in
the userinfo of a URL (``https://user:password@host/hook``) was not a secret to the gateway.

- In a binding's options (a webhook binding's ``url``) it was copied into every queued message's outbox
  row, so it sat in the store file (and its -wal) and, at ``library_level = "DEBUG"``, in aiosqlite's
  log line of every insert. Binding options are stored with each message by design (a reload must not
  change what a queued message was routed with), so such a URL is now refused at load, naming the key,
  never the value: credentials belong in the gateway's own table, which is never stored.
- Anywhere in the config (a gateway table's ``url``, a DSN) the password was registered for redaction
  only as part of the whole value, if at all; a log line quoting the URL, or the password alone, kept
  it. ``iter_secrets`` now yields the decoded password of every URL with credentials, so
  ``configure_logging`` and ``create_app`` register it at load time."""

from __future__ import annotations

import io
import logging

import pytest
from claudemesh_gateway import logconfig
from claudemesh_gateway.cli import main
from claudemesh_gateway.logconfig import SECRETS, configure_logging
from claudemesh_gateway.settings import iter_secrets, settings_from_dict

PASSWORD = "defect16-Url-Pa$$word"  # "$" is URL-quoted in the URL: the decoded form is the secret
QUOTED = "defect16-Url-Pa%24%24word"
HOOK_SECRET = "defect16-webhook-hmac-secret-0123456789"


def _config(url: str, *, in_binding: bool) -> str:
    binding_url = f', options = {{ url = "{url}" }}' if in_binding else ""
    gateway_url = "" if in_binding else f'url = "{url}"\n'
    return (f'[gateways.hook]\ntype = "webhook"\nsecret = "{HOOK_SECRET}"\n{gateway_url}'
            f'[[routes]]\nname = "relay"\nbinds = [\n  {{ gateway = "hook", chat = "in", direction = "in" }},\n'
            f'  {{ gateway = "hook", chat = "out", direction = "out"{binding_url} }},\n]\n')


def test_defect16_binding_url_with_a_password_is_refused_without_echoing_it(tmp_path, capsys):
    path = tmp_path / "gateway.toml"
    path.write_text(_config(f"https://hookuser:{QUOTED}@hooks.example.org/in", in_binding=True))
    assert main(["-c", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert "routes[0] (relay).binds[1].options.url: a URL with a password" in err, err
    assert "[gateways.hook]" in err
    assert PASSWORD not in err and QUOTED not in err


def test_defect16_gateway_table_url_with_a_password_still_loads(tmp_path, capsys):
    path = tmp_path / "gateway.toml"
    path.write_text(_config(f"https://hookuser:{QUOTED}@hooks.example.org/in", in_binding=False))
    assert main(["-c", str(path), "check"]) == 0, capsys.readouterr().err


def test_defect16_url_passwords_are_registered_for_redaction(monkeypatch):
    monkeypatch.setattr(SECRETS, "_values", set())
    monkeypatch.setattr(SECRETS, "_ordered", ())
    settings = settings_from_dict({
        "gateways": {"hook": {"type": "webhook", "secret": HOOK_SECRET,
                              "url": f"https://hookuser:{QUOTED}@hooks.example.org/in"}},
    })
    assert PASSWORD in set(iter_secrets(settings))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging(settings, level="DEBUG")
        buf = io.StringIO()
        for h in root.handlers:
            h.setStream(buf)
        log = logging.getLogger("claudemesh_gateway.defect16")
        log.warning("POST https://hookuser:%s@hooks.example.org/in failed", QUOTED)
        log.warning("the password alone: %s", PASSWORD)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        logging.captureWarnings(False)
    text = buf.getvalue()
    assert PASSWORD not in text and QUOTED not in text, text
    assert text.count("***") == 2


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://gw:s3cr%2Ft@db.internal:5432/gateway", "s3cr/t"),
    ("https://user@host.example/path", None),  # a user without a password
    ("https://host.example/a@b", None),  # an @ in the path is not userinfo
    ("not a url: user:password@host", None),
    ("https://u:p@[::1/broken", None),  # urlsplit refuses it: not a URL
])
def test_defect16_url_password_parses_userinfo_only(text, expected):
    assert hasattr(logconfig, "url_password"), "logconfig.url_password: the userinfo password of a URL"
    assert logconfig.url_password(text) == expected

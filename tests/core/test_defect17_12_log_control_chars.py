"""Issue 17 item 12 (log part): a value from outside with a newline forged log lines, e.g. an admin
token whose ``sub`` is ``"ops\\n<date> ERROR ..."``. Both formatters now escape control characters in
the message, the logger name and every structured field, so every record is exactly one line (a
traceback keeps its own line breaks, with other control characters escaped). The admin API case is
tests/web/test_defect17_12_admin_sub_log_line.py."""

from __future__ import annotations

import io
import json
import logging

import pytest
from claudemesh_gateway.logconfig import configure_logging
from claudemesh_gateway.settings import settings_from_dict

FORGED = "ops\n2026-12-07 12:00:00,000 ERROR   claudemesh_gateway.app: forged line\r\x1b[2J\u2028\x85end"


@pytest.fixture
def log_to():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def install(fmt: str) -> io.StringIO:
        buf = io.StringIO()
        configure_logging(settings_from_dict({"log": {"level": "DEBUG", "format": fmt}}))
        for h in logging.getLogger().handlers:
            h.setStream(buf)
        return buf

    yield install
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def _emit() -> None:
    log = logging.getLogger("claudemesh_gateway.defect17")
    log.info("admin %s: dlq retry", FORGED)
    log.warning("f-string " + FORGED)
    log.info("structured", extra={"gateway": FORGED, "route": "r\n1"})
    logging.getLogger("claudemesh_gateway.defect17." + FORGED).info("a logger name with a newline")


def test_defect17_12_text_format_escapes_control_characters_in_every_field(log_to):
    buf = log_to("text")
    _emit()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert not any("\r" in ln or "\x1b" in ln or "\u2028" in ln or "\x85" in ln for ln in lines)
    assert all(not ln.startswith("2026-12-07 12:00:00,000 ERROR") for ln in lines)
    assert "ops\\n2026-12-07 12:00:00,000 ERROR   claudemesh_gateway.app: forged line\\r\\x1b[2J\\u2028\\x85end" in lines[0]
    assert "route=r\\n1" in lines[2] and "gateway=ops\\n2026" in lines[2]


def test_defect17_12_a_traceback_keeps_its_lines_but_not_other_control_characters(log_to):
    buf = log_to("text")
    try:
        raise ValueError("bad \x1b[31mred\x1b[0m value")
    except ValueError:
        logging.getLogger("claudemesh_gateway.defect17").exception("failed for %s", "a\nb")
    text = buf.getvalue()
    first, *rest = text.splitlines()
    assert "failed for a\\nb" in first and rest[0].startswith("Traceback")
    assert "\x1b" not in text and "bad \\x1b[31mred\\x1b[0m value" in text


def test_defect17_12_json_format_is_one_line_per_record(log_to):
    buf = log_to("json")
    _emit()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4, lines
    records = [json.loads(ln) for ln in lines]
    assert records[0]["msg"] == f"admin {FORGED}: dlq retry"  # the value survives, escaped by JSON
    assert records[2]["gateway"] == FORGED
    assert not any("\u2028" in ln or "\x85" in ln or "\x7f" in ln for ln in lines)


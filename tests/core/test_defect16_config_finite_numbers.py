"""Found by the config fuzzing of issue 16 (the numeric sweep): ``nan`` passed ``[health]
stall_after_s`` / ``poll_stall_after_s`` (readiness then never saw a stall) and gateway tables, a negative
stall bound passed too, and ``inf`` passed every timer and rate of ``[server]``, ``[mesh.*]``,
``[delivery]``, ``[health]`` and the gateways. Every float of the core's config models (and of the
GatewayConfig / BindingOptions bases plugins build on) must now be finite; stall bounds must be > 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from claudemesh_gateway import cli
from claudemesh_gateway.mesh.crypto import KeyPair

PAIR = KeyPair.generate()
WEBHOOK = '[gateways.webhook]\nsecret = "defect16-webhook-secret-0123456789"\nurl = "http://127.0.0.1:9/s"\n'
MESH = ('[mesh.m]\nbroker_url = "ws://127.0.0.1:9/ws"\nmesh_id = "m1"\nmember_id = "u1"\n'
        f'secret_key = "{PAIR.secret_hex}"\n')

CASES = {
    "health_nan": ("[health]\nstall_after_s = nan\n", "health.stall_after_s: "),
    "health_negative": ("[health]\npoll_stall_after_s = -1\n", "health.poll_stall_after_s: "),
    "health_inf": ("[health]\nstall_after_s = inf\n", "health.stall_after_s: "),
    "server_inf": ("[server]\nshutdown_timeout = inf\n", "server.shutdown_timeout: "),
    "delivery_inf": ("[delivery]\nmax_age = inf\n", "delivery.max_age: "),
    "delivery_limit_inf": ('[delivery.default_limits]\nwebhook = [{scope = "{chat}", per_second = inf}]\n',
                           "delivery.default_limits.webhook[0].per_second: "),
    "mesh_inf": (MESH + "ack_timeout = inf\n", "mesh.m.ack_timeout: "),
    "mesh_rate_inf": (MESH + "rate_per_minute = inf\n", "mesh.m.rate_per_minute: "),
    "gateway_nan": ("", "gateways.webhook.timeout: "),
}


@pytest.mark.parametrize("name", CASES)
def test_non_finite_numbers_are_config_errors(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra, where = CASES[name]
    webhook = WEBHOOK + ("timeout = nan\n" if name == "gateway_nan" else "")
    cfg = tmp_path / "c.toml"
    cfg.write_text(webhook + extra)
    code = cli.main(["-c", str(cfg), "check"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"claudemesh-gateway: config error: {where}"), lines
    assert "finite" in lines[0] or "greater than" in lines[0], lines

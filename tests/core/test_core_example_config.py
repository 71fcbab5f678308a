"""config.example.toml validates against the real models, commented examples included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from claudemesh_gateway.app import route_problems, validate_gateways
from claudemesh_gateway.errors import ConfigError
from claudemesh_gateway.plugin_manager import gateway_kinds, make_plugin_manager
from claudemesh_gateway.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


@pytest.fixture
async def example_dir(tmp_path: Path) -> Path:
    """config.example.toml in a fresh directory, with the meshes.toml the dev broker writes."""
    from claudemesh_gateway.devbroker import DevBroker

    shutil.copy(EXAMPLE, tmp_path / "config.toml")
    broker = DevBroker(tmp_path / "var" / "devbroker", port=0)
    await broker.start()
    await broker.stop()
    assert (tmp_path / "var" / "devbroker" / "meshes.toml").exists()
    return tmp_path


def _validate(path: Path, *, allow_placeholders: bool) -> list[str]:
    settings = load_settings(path, allow_placeholders=allow_placeholders)
    pm = make_plugin_manager(entry_points=False, disable=settings.plugins.disable)
    configs = validate_gateways(settings, gateway_kinds(pm))
    return route_problems(settings, {n: cls for n, (cls, _) in configs.items()})


async def test_example_config_runs_as_is(example_dir: Path) -> None:
    assert _validate(example_dir / "config.toml", allow_placeholders=False) == []
    settings = load_settings(example_dir / "config.toml")
    assert settings.dev_broker.embedded and "dev" in settings.mesh
    assert settings.server.state_dir == example_dir / "var"


async def test_example_config_before_the_dev_broker_wrote_its_tables(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "config.toml")
    with pytest.raises(ConfigError, match=r"include\[0\]: file not found"):
        load_settings(tmp_path / "config.toml")
    first = load_settings(tmp_path / "config.toml", allow_missing_includes=True)
    assert first.dev_broker.embedded and first.mesh == {}


async def test_commented_examples_validate(example_dir: Path) -> None:
    text = (example_dir / "config.toml").read_text()
    assert text.count("\n#: ") > 10
    uncommented = "\n".join(line.removeprefix("#: ") for line in text.splitlines())
    (example_dir / "full.toml").write_text(uncommented)
    assert _validate(example_dir / "full.toml", allow_placeholders=True) == []
    with pytest.raises(ConfigError) as info:
        load_settings(example_dir / "full.toml")
    assert all("placeholder value CHANGE_ME" in p for p in info.value.problems)
    assert {p.split(":")[0] for p in info.value.problems} >= {
        "gateways.telegram.token", "gateways.slack.bot_token", "gateways.whatsapp.auth_token"}

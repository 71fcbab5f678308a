"""The configuration examples in docs/routing.md build against the real gateway kinds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from claudemesh_gateway.plugin_manager import gateway_kinds, make_plugin_manager
from claudemesh_gateway.routing.table import RouteTable

DOC = Path(__file__).resolve().parents[2] / "docs" / "routing.md"


def _toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def kinds():
    return gateway_kinds(make_plugin_manager(entry_points=False))


@pytest.mark.parametrize("index", range(len(_toml_blocks())))
def test_doc_examples_compile(index, kinds):
    data = tomllib.loads(_toml_blocks()[index])
    gateways = {name: kinds[table.get("type", name)] for name, table in data.get("gateways", {}).items()}
    for route in data["routes"]:
        for b in route.get("binds", []):
            if b["gateway"] != "mesh" and b["gateway"] not in gateways:
                gateways[b["gateway"]] = kinds[b["gateway"]]  # instance named after its kind
    for name, table in data.get("gateways", {}).items():
        gateways[name].Config.model_validate({k: v for k, v in table.items() if k != "type"})
    meshes = {"prod": None, "partner": None}
    table = RouteTable.build(data["routes"], gateways=gateways, meshes=meshes)
    assert len(table.describe()) == len(data["routes"])


def test_the_docs_have_examples():
    assert len(_toml_blocks()) >= 2

"""Embedded loopback emulation of the claudemesh broker (development and tests only).

It reproduces every behaviour of part B of the mesh protocol spec, warts included: see
``docs/devbroker.md``. The API is documented at the top of :mod:`.broker`::

    from claudemesh_gateway.devbroker import DevBroker, DevBrokerConfig

    broker = DevBroker(tmp_path, config=DevBrokerConfig(grace_s=0.5))
    await broker.start()
    seed = broker.default_mesh            # mesh "dev", members gateway/alice/bob, topic "general"
    ...
    await broker.stop()

The ``claudemesh-gateway dev-broker`` command is :func:`.cli.main` / :func:`.cli.run`;
``mint-invite`` is :func:`.cli.mint_invite_offline`.
"""

from __future__ import annotations

from .api import build_invite
from .broker import DevBroker
from .config import DevBrokerConfig
from .info import DevSeed, MemberInfo, MeshInfo, TopicInfo
from .model import QueueRow, TopicMessage

__all__ = [
    "DevBroker",
    "DevBrokerConfig",
    "DevSeed",
    "MemberInfo",
    "MeshInfo",
    "QueueRow",
    "TopicInfo",
    "TopicMessage",
    "build_invite",
]

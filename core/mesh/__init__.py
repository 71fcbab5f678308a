"""The claudemesh peer: connection, handshake, crypto, send queue, topic poller, roster."""

from __future__ import annotations

from .config import MeshConfig, TopicKeyConfig
from .peer import MeshPeer
from .state import JsonFileKV, MemoryKV
from .types import MeshInbound, Peer, Topic

__all__ = ["JsonFileKV", "MemoryKV", "MeshConfig", "MeshInbound", "MeshPeer", "Peer", "Topic", "TopicKeyConfig"]

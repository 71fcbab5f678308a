"""Durable state: inbox ledger, outbox, dead letters, message map, cursors, audit."""

from __future__ import annotations

from .base import DeadLetter, OutboxItem, Store

__all__ = ["DeadLetter", "OutboxItem", "Store"]

"""Durable state: inbox ledger, outbox, dead letters, message map, cursors, audit."""

"""Outbox workers, rate limiters, retry/backoff, dead letters."""

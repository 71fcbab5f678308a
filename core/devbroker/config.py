"""Tunables of the dev broker. Defaults are the real broker's; tests shrink the timers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class DevBrokerConfig:
    """Every limit and timer of the emulated broker (seconds unless the name says otherwise)."""

    max_message_bytes: int = 65_536          # MAX_MESSAGE_BYTES: send payload limit (B.22), /join body limit
    max_frame_bytes: int = 65_536            # WS frame limit (close 1009, B.2); the broker uses the same value
    max_connections_per_mesh: int = 100      # counts offline leases; only eviction gives a slot back
    grace_s: float = 90.0                    # offline lease after a socket closes
    claim_s: float = 30.0                    # drain claim lease
    ping_interval_s: float = 30.0            # keepalive sweep period
    pong_timeout_s: float = 75.0             # terminate when the last pong is older than this
    stale_presence_s: float = 90.0           # presence rows with an older last_ping_at are hidden from list_peers
    sweep_interval_s: float = 15.0           # clear expired claims
    purge_interval_s: float = 3600.0         # delete undelivered rows older than purge_age_s
    purge_age_s: float = 7 * 86_400.0
    rate_burst: int = 10                     # per-member token bucket
    rate_per_minute: float = 60.0
    rate_idle_s: float = 600.0               # idle buckets are dropped
    hook_rate_per_minute: int = 30           # POST /hook/set-status per client IP
    timestamp_skew_ms: int = 60_000
    attestation_max_ttl_ms: int = 24 * 3600 * 1000
    unique_ms_timestamps: bool = True        # one ms per queue/topic row (see util.row_time)
    drain_before_ack: bool = True            # hello drains push before hello_ack (the real broker races)
    close_timeout_s: float = 5.0             # wait for the peer's close frame
    persist_debounce_s: float = 0.05         # coalesce state writes
    clock_offset_ms: int = 0                 # added to the created_at of new queue/topic rows: a broker clock
    #                                          that runs fast (> 0) or slow (< 0); may be changed while running
    # Later upstream brokers (after the spec's pinned commit; see broker.py "Later upstream behaviour").
    # False / None reproduce the pinned commit exactly.
    role_scoped_dedup: bool = True           # sessionId dedup only among presences of the hello's role
    evict_split_presences: bool = True       # a stale-swept row with an online lease: evict, close 4004
    zombie_min_age_s: float | None = 30.0    # an open socket without a presence this old: close 4005

"""/-/ endpoints: health, readiness, metrics, admin API, dashboard."""

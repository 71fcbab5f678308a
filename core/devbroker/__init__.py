"""Embedded loopback emulation of the claudemesh broker (development and tests only)."""

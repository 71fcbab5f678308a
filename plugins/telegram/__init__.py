"""telegram gateway plugin."""

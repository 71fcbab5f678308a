"""bridge gateway plugin."""

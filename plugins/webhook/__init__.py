"""webhook gateway plugin."""

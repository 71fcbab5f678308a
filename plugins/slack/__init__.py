"""slack gateway plugin."""

"""whatsapp gateway plugin."""

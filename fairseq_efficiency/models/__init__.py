"""Model architectures registered by the plugin."""

"""Console scripts of the plugin."""

"""ssmkit.layers."""

"""ssmkit.models."""

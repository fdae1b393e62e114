"""ssmkit.bench."""

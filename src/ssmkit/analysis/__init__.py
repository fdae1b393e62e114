"""ssmkit.analysis."""

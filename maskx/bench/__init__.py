"""maskx.bench."""

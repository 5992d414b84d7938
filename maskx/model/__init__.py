"""maskx.model."""

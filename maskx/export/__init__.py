"""maskx.export."""

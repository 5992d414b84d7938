"""maskx.service."""

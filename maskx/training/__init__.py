"""maskx.training."""

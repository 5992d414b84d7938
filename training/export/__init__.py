"""Export: checkpoint → ONNX with baked mask weights, verified against PyTorch."""

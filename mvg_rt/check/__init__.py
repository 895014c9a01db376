"""``mvg-rt check``: exported engines against the PyTorch FP32 reference (per component and end to end)."""

"""Plain ``torch.nn`` building blocks (no Lightning imports here)."""

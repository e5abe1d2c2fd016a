"""Hydra config tree, shipped inside the wheel as gradexp.configs (pkg://gradexp.configs)."""

"""grace-lit: Hydra + Lightning experiments for multi-task RUL prediction."""

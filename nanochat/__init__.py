"""NanoChat substrate: a small GPT trainer, installed as ``fusedgate.nanochat``."""

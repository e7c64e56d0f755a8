"""Benchmarks of FusedGate against torch's fused AdamW, installed as ``fusedgate.bench``."""

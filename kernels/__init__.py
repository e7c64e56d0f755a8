"""Triton kernels for FusedGate, installed as ``fusedgate.kernels``."""

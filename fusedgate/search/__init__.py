"""Evolutionary search over the GateSpec DSL (see fusedgate.search.cli)."""

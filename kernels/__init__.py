"""Triton kernels for FusedGate, installed as ``fusedgate.kernels``.

``_interpret`` is imported first: without a CUDA device it selects Triton's interpreter before any
kernel is defined (see its docstring). Modules: ``step_kernels`` (the element-wise fused passes),
``scalar_kernels`` (gate, bias corrections, sensor EMAs: one program per parameter), ``layout`` (the
per-group launch tables; ``slots`` their columns), ``newton_schulz`` (orthogonalisation), ``backend`` (what the
optimizer calls), ``sharded`` (the gated step on FSDP2 row shards), ``compile_check`` (ahead-of-time CUDA
compilation of every kernel, no GPU needed).
"""

from fusedgate.kernels import _interpret  # noqa: F401  (must precede every @triton.jit definition)

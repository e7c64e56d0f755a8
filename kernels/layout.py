"""Launch tables for one bucket of parameters (one group's params with the same param and grad dtype).

Multi-tensor launch: every element-wise kernel covers all the bucket's tensors in one grid of
``n_chunks`` programs. Program c handles elements [chunk_off[c], chunk_off[c] + BLOCK) of parameter
chunk_param[c]; it finds the tensors through the pointer table (int64 addresses of p, grad, m, v,
sensors, step, decay products, cast to typed pointers inside the kernel). Nothing is packed or copied:
the state tensors keep the checkpoint layout of ``fusedgate.reference``.

Tables are built on the host once and kept in the cache the caller passes (FusedGate owns one per
optimizer, ``FusedGate._cache``; nothing is kept at module level): the static part (chunking, shapes,
scratch buffers) while the shapes stay the same, the pointer table while no tensor moves. A rebuild
copies a few small tables to the device from pinned memory without synchronising; on a cache hit
``step()`` launches kernels only, so it can be captured in a CUDA graph after a warm-up step.
"""

from __future__ import annotations

import math

import torch

from fusedgate import reference as R
from fusedgate.kernels import slots as S
from fusedgate.kernels._interpret import INTERPRET

# Elements per program of the element-wise kernels (large blocks keep the interpreter's per-program overhead
# down) and their warps (Triton's default); bench/gpu_probe.py times other pairs on a GPU.
BLOCK = 4096 if INTERPRET else 1024
STEP_WARPS = 4
# The per-parameter reductions (gate_kernel's finite test, finalize_kernel's sums) run one program per parameter,
# looping over its chunks FBLOCK at a time: one dependent load per trip, so a 67M-element matrix (65,536 chunks)
# paid 256 trips at FBLOCK = 256, about 0.5 ms on an H200 (bench/results/nvidia-h200/README.md). The sums' tile
# (FBLOCK × 8 float32) takes 128 registers a thread at 8 warps (SUMS_WARPS; 255 at 4).
FBLOCK = 1024
SUMS_WARPS = 8
# The finiteness test (gate_kernel, adamw_kernel, param_flags_kernel) loops FLAGS_BLOCK flags a trip over 4 warps:
# 16 trips for that matrix, 4× fewer than FBLOCK at one warp, in the same 128 registers a thread, no spills (sm_90)
FLAGS_BLOCK = 4096
FLAGS_WARPS = 4
# The element-wise kernels' vector accesses (``step_kernels``, ALIGNED): 16-byte addresses, sizes in multiples of 8;
# VECTOR_ACCESSES False never uses them (bench/gpu_probe.py times both)
VECTOR_BYTES = 16
VECTOR_ELEMENTS = 8
VECTOR_ACCESSES = True


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a device tensor, copied without a host synchronisation."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host


def split64(x: float) -> tuple[float, float]:
    """(hi, lo) float32 pair with hi + lo = x to ~1e-16 relative (Triton passes floats as float32)."""
    x = float(x)
    if not math.isfinite(x):
        return x, 0.0
    hi = float(torch.tensor(x, dtype=torch.float32))
    return hi, float(torch.tensor(x - hi, dtype=torch.float32))


def lerp_weight(w: float) -> tuple[float, float]:
    """(w, w − 1) of a lerp weight, both rounded to float32 and w − 1 formed in float32, as torch.lerp forms
    them (``step_kernels._lerp``)."""
    w32 = torch.tensor(w, dtype=torch.float32)
    return float(w32), float(w32 - 1.0)


class BucketLayout:
    """Static tables of one bucket: chunking, per-parameter constants and scratch buffers."""

    def __init__(self, params: list[torch.Tensor], units: str | None, device: torch.device,
                 whole: list[tuple] | None = None):
        """``whole``: the whole matrices' shapes when ``params`` are row shards of them (FSDP2's local
        shards): the static row (clip's √N, the blend's and the decay's shape factors) is the whole matrix's,
        the chunking the shard's."""
        self.device = device
        self.shapes = [tuple(p.shape) for p in params]
        self.numels = [p.numel() for p in params]
        self.n = len(params)
        chunks = [math.ceil(n / BLOCK) for n in self.numels]
        self.n_chunks = sum(chunks)
        chunk_start = [0]
        for k in chunks:
            chunk_start.append(chunk_start[-1] + k)
        chunk_param = [i for i, k in enumerate(chunks) for _ in range(k)]
        chunk_off = [j * BLOCK for k in chunks for j in range(k)]
        self.total = sum(self.numels)
        ns_base = [0]
        for n in self.numels[:-1]:
            ns_base.append(ns_base[-1] + n)
        self.ns_base_host = ns_base

        self.chunk_start = to_device(chunk_start, torch.int64, device)
        self.chunk_param = to_device(chunk_param or [0], torch.int64, device)
        self.chunk_off = to_device(chunk_off or [0], torch.int64, device)
        self.numel_table = to_device(self.numels, torch.int64, device)
        self.ns_base = to_device(ns_base, torch.int64, device)
        if units is not None:
            shapes = self.shapes if whole is None else whole
            self.static64 = to_device([self._static_row(shape, math.prod(shape), units) for shape in shapes],
                                      torch.float64, device)
        self.flags = torch.zeros(max(self.n_chunks, 1), dtype=torch.int32, device=device)
        self.partials = torch.zeros(max(self.n_chunks, 1), S.N_PS, dtype=torch.float32, device=device)
        self.coefs = torch.zeros(self.n, S.N_COEF, dtype=torch.float32, device=device)
        self._ns_buffer: torch.Tensor | None = None
        self._pointer_rows: list[list[int]] | None = None
        self.ptrs: torch.Tensor | None = None
        self.aligned = False   # see ``pointers``
        self._sizes_aligned = all(n % VECTOR_ELEMENTS == 0 for n in self.numels)
        self.checked_states = None   # backend.CheckedStates: the state tensors backend.Operands last checked
        self._poles_key = None
        self.poles64: torch.Tensor | None = None

    @staticmethod
    def _static_row(shape, numel: int, units: str) -> list[float]:
        """[√N, c_a base, c_o base, σ̂]: direction_coefficients of the reference without the ortho factor, and
        the cautious decay's shape scale (``reference.decay_scale``)."""
        rows, cols = R.matrix_view_shape(torch.Size(shape))
        match = R.ADAM_UPDATE_RMS * math.sqrt(max(rows, cols))
        if units == "adam":
            adam_base, ortho_base = 1.0, match
        else:
            shape_scale = R.shape_factor(rows, cols)
            adam_base, ortho_base = (shape_scale / match if match else 0.0), shape_scale
        decay = R.decay_scale(rows, cols, units)
        return [math.sqrt(max(numel, 1)), adam_base, ortho_base, decay]   # an empty param has G = 0: no clip

    def pointers(self, rows: list[list[int]]) -> torch.Tensor:
        """The pointer table for these addresses (rebuilt only when an address changed). With it ``aligned``: every
        address of p, grad, m, v is a multiple of VECTOR_BYTES and every size of VECTOR_ELEMENTS, so the
        element-wise kernels may use vector accesses (their ALIGNED; the orthogonaliser buffer's offsets, sums of
        sizes, then are multiples too)."""
        if rows != self._pointer_rows:
            self.ptrs = to_device(rows, torch.int64, self.device)
            self._pointer_rows = [list(row) for row in rows]
            self.aligned = VECTOR_ACCESSES and self._sizes_aligned and all(
                address % VECTOR_BYTES == 0 for row in rows for address in row[S.T_P:S.T_V + 1])
        return self.ptrs

    def poles(self, values: list[float]) -> torch.Tensor:
        """The float64 pole table [conservative ×5, aggressive − conservative ×5] (rebuilt when it changes)."""
        key = tuple(values)
        if key != self._poles_key:
            self.poles64 = to_device(values, torch.float64, self.device)
            self._poles_key = key
        return self.poles64

    def ns_buffer(self, dtype: torch.dtype) -> torch.Tensor:
        """One flat buffer for the Newton–Schulz input/output of every parameter (``ns_base`` offsets)."""
        if self._ns_buffer is None or self._ns_buffer.dtype != dtype:
            self._ns_buffer = torch.empty(max(self.total, 1), dtype=dtype, device=self.device)
        return self._ns_buffer

    def same_shape_runs(self) -> list[tuple[int, tuple[int, int, int, int]]]:
        """(first parameter index, (element start, count, rows, cols)) of each run of consecutive parameters
        with one matrix shape."""
        runs = []
        i = 0
        while i < self.n:
            j = i
            while j < self.n and self.shapes[j] == self.shapes[i]:
                j += 1
            rows, cols = R.matrix_view_shape(torch.Size(self.shapes[i]))
            if self.numels[i]:
                runs.append((i, (self.ns_base_host[i], j - i, rows, cols)))
            i = j
        return runs

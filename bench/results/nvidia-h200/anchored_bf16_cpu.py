"""The float64-anchored measure of ``tests/test_kernels_gpu.py::test_cuda_triton_matches_cuda_reference_teacher_forced``
on the CPU, where the orthogonaliser normally runs in float32: here both backends are made to run it in bf16 (as
on CUDA), and the Triton backend (under the interpreter) with the plain or the folded polynomial. Per step and
matrix, teacher-forced: max |p − p_float64| / max |Δp_float64| for each path, its mean and worst over 20 steps.
Run from the repository root (about a minute):

    python bench/results/nvidia-h200/anchored_bf16_cpu.py > bench/results/nvidia-h200/anchored_bf16_cpu.txt
"""

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from conftest import resynchronise  # noqa: E402
from twins import busy_spec, random_grads  # noqa: E402

from fusedgate import FusedGate  # noqa: E402
from fusedgate import reference as R  # noqa: E402
from fusedgate.kernels import backend as B  # noqa: E402

SHAPES = [(64, 96), (96, 64), (3, 1000), (0, 8), (33, 17), (64, 96)]   # the GPU test's
STEPS = 20


def bf16_orthogonaliser(folded: bool) -> None:
    """Both backends' CPU orthogonaliser in bf16, as on CUDA; the Triton one plain or folded."""
    B.ns_dtype = lambda device: torch.bfloat16
    flags = R.StackFlags
    R.StackFlags = lambda **kw: flags(**{**kw, "ns_dtype": torch.bfloat16 if kw.get("ns_dtype") == torch.float32
                                         else kw.get("ns_dtype", torch.bfloat16)})
    plain = R.polar_iteration
    B.device_iteration = lambda iterate, device: R.polar_iteration_gemm if folded and iterate is plain else iterate


def params_of(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter((torch.randn(*s, generator=gen) * 0.5).to(dtype)) for s in SHAPES]


def errors(dtype) -> dict[str, list[float]]:
    spec = busy_spec("adam", (1.0, 0.5))
    twins = [(p, FusedGate(p, spec=spec, total_steps=STEPS, backend=b))
             for p, b in ((params_of(dtype), "triton"), (params_of(dtype), "reference"),
                          (params_of(torch.float64), "reference"))]
    (tri_params, tri), (ref_params, ref), (wide_params, wide) = twins
    out = {"triton": [], "reference": []}
    for s in range(STEPS):
        before = [p.detach().double().clone() for p in ref_params]
        grads = random_grads(SHAPES, s, dtype, spike=(s == 3))
        for params, opt in twins:
            for p, g in zip(params, grads):
                p.grad = g.to(p.dtype)
            opt.step(loss=torch.tensor(2.0 - 0.05 * s))
        for a, b, truth, p0 in zip(tri_params, ref_params, wide_params, before):
            if a.numel():
                motion = max((truth.detach() - p0).abs().max().item(), 1e-30)
                for name, x in (("triton", a), ("reference", b)):
                    out[name].append((x.detach().double() - truth.detach()).abs().max().item() / motion)
        resynchronise(tri_params, tri, ref_params, ref)
        resynchronise(wide_params, wide, ref_params, ref)
    return out


def main() -> None:
    form = sys.argv[1] if len(sys.argv) > 1 else None
    if form is None:   # each form in its own process: the patches are process-wide
        import subprocess
        print("| Triton path | params | Triton mean | reference mean | ratio | Triton worst | reference worst "
              "| ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for name in ("plain", "folded"):
            sys.stdout.write(subprocess.run([sys.executable, __file__, name], capture_output=True, text=True,
                                            check=True).stdout)
        return
    bf16_orthogonaliser(form == "folded")
    for dtype in (torch.float32, torch.bfloat16):
        e = errors(dtype)
        mt, mr = statistics.mean(e["triton"]), statistics.mean(e["reference"])
        wt, wr = max(e["triton"]), max(e["reference"])
        print(f"| {form} | {str(dtype).removeprefix('torch.')} | {mt:.4f} | {mr:.4f} | {mt / mr:.3f} | {wt:.4f} | "
              f"{wr:.4f} | {wt / wr:.3f} |")


if __name__ == "__main__":
    main()

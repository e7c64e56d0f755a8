"""Compile every Triton kernel of fusedgate.kernels for CUDA without a GPU (ahead of time, to cubin).

    python -m fusedgate.kernels.compile_check 90              # sm_90; prints one JSON line
    python -m fusedgate.kernels.compile_check 90 --accesses   # and each variant's global access widths

prints {kernel variant: "ok" | error}; with ``--accesses``, {variant: {SASS global load/store opcode: count}}
from the cubin (``cuobjdump``, shipped with Triton), which shows whether the ALIGNED variants of the element-wise
kernels got their 128-bit accesses (``LDG.E.128``/``STG.E.128``). The interpreter accepts code the compiler
rejects (e.g. non-constexpr globals), so CI runs this to check that the kernels build for the GPU. The kernels must be
defined for the compiler, not the interpreter (``fusedgate.kernels`` picks the interpreter on a machine
without CUDA, before this module runs), so when they were not, the command runs itself again with
``TRITON_INTERPRET=0``.
"""

import json
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fusedgate.kernels import layout as L
from fusedgate.kernels import newton_schulz as NS
from fusedgate.kernels import scalar_kernels as SK
from fusedgate.kernels import step_kernels as K

P = "*i64"
CHUNKS = {"ptrs": P, "chunk_param": P, "chunk_off": P, "numels": P}


def floats(*names):
    return {name: "fp32" for name in names}


def variants():
    step = {**CHUNKS, "coefs": "*fp32", "partials": "*fp32",
            **floats("one_minus_mu", "one_minus_mu_m1", "decay", "eps"),
            "P_DTYPE": "constexpr", "G_DTYPE": "constexpr", "USE_CLIP": "constexpr", "CAUTIOUS": "constexpr",
            "BLOCK": "constexpr", "ALIGNED": "constexpr"}
    adamw_step = {**CHUNKS, "coefs": "*fp32", **floats("one_minus_beta1", "one_minus_beta1_m1", "one_minus_beta2",
                                                        "one_minus_beta2_m1", "decay", "eps"), "P_DTYPE": "constexpr",
                  "G_DTYPE": "constexpr", "BLOCK": "constexpr", "ALIGNED": "constexpr"}
    apply = {**CHUNKS, "coefs": "*fp32", "partials": "*fp32", "ns_output": "*bf16", "ns_base": P,
             **floats("decay", "eps"), "P_DTYPE": "constexpr", "USE_ADAM": "constexpr", "CAUTIOUS": "constexpr",
             "BLOCK": "constexpr", "ALIGNED": "constexpr"}
    moments = {**CHUNKS, "coefs": "*fp32", "partials": "*fp32", "ns_input": "*bf16", "ns_base": P,
               **floats("one_minus_mu", "one_minus_mu_m1", "mu", "mu_m1"), "G_DTYPE": "constexpr",
               "S_DTYPE": "constexpr",
               "USE_CLIP": "constexpr", "NESTEROV": "constexpr", "USE_ADAM": "constexpr", "BLOCK": "constexpr",
               "ALIGNED": "constexpr"}
    gate = {"ptrs": P, "chunk_start": P, "flags": "*i32", "static64": "*fp64", "poles64": "*fp64",
            "coefs": "*fp32", "global_state": "*fp32",
            **floats("total_steps", "gate_bias", "sharpness", "dampen_keep", "w_loss", "w_imp", "w_gn", "w_ur",
                     "w_al", "w_sf", "scale_hi", "scale_lo", "clip_hi", "clip_lo", "lr_hi", "lr_lo", "mu_hi",
                     "mu_lo", "lr_wd_hi", "lr_wd_lo"), "USE_ADAM": "constexpr", "FBLOCK": "constexpr"}
    adamw = {"ptrs": P, "chunk_start": P, "flags": "*i32", "coefs": "*fp32",
             **floats("beta2", "one_minus_beta2", "lr_hi", "lr_lo", "beta1_hi", "beta1_lo", "beta2_hi", "beta2_lo"),
             "FBLOCK": "constexpr"}
    finalize = {"ptrs": P, "chunk_start": P, "partials": "*fp32", "coefs": "*fp32",
                **floats("w_grad_norm", "w_update_ratio", "w_alignment", "measure"), "FBLOCK": "constexpr"}
    ns = {"PRECISION": "tf32", "BM": 64, "BK": 32}
    for aligned in (False, True):
        yield from _elementwise(step, adamw_step, apply, moments, aligned)
    for use_adam in (False, True):
        yield f"gate/{'blend' if use_adam else 'ortho'}", SK.gate_kernel, gate, \
            {"USE_ADAM": use_adam, "FBLOCK": L.FLAGS_BLOCK}
    yield "adamw", SK.adamw_kernel, adamw, {"FBLOCK": L.FLAGS_BLOCK}
    for has_loss in (True, False):
        yield (f"global/{'loss' if has_loss else 'no loss'}", SK.global_kernel,
               {"global_state": "*fp32", "loss": "*fp32", "before": "*fp32", **floats("w_loss", "w_improvement"),
                "HAS_LOSS": "constexpr"}, {"HAS_LOSS": has_loss})
    yield "finalize", SK.finalize_kernel, finalize, {"FBLOCK": L.FBLOCK}
    yield "param_sums", SK.param_sums_kernel, {"chunk_start": P, "partials": "*fp32", "out": "*fp32",
                                                "FBLOCK": "constexpr"}, {"FBLOCK": L.FBLOCK}
    yield "param_flags", SK.param_flags_kernel, {"chunk_start": P, "flags": "*i32", "out": "*i32",
                                                  "FBLOCK": "constexpr"}, {"FBLOCK": L.FLAGS_BLOCK}
    yield "ns/gram", NS._gram_kernel, {"X": "*bf16", "A": "*bf16", **{k: "i32" for k in ("n", "k", "sxb", "sxr",
                                       "sxc")}, "PRECISION": "constexpr", "BM": "constexpr", "BK": "constexpr"}, ns
    yield "ns/poly", NS._poly_kernel, {"A": "*bf16", "B": "*bf16", "n": "i32", **floats("coef_b", "coef_c"),
                                       "PRECISION": "constexpr", "BM": "constexpr", "BK": "constexpr"}, ns
    yield "ns/update", NS._update_kernel, {"X": "*bf16", "B": "*bf16", "Y": "*bf16", "n": "i32", "k": "i32",
                                           "coef_a": "fp32", "PRECISION": "constexpr", "BM": "constexpr",
                                           "BN": "constexpr", "BK": "constexpr"}, {**ns, "BN": 64}


def _elementwise(step, adamw_step, apply, moments, aligned: bool):
    """The element-wise kernels' variants, named with an "/aligned" suffix when ALIGNED (vector accesses)."""
    tail = "/aligned" if aligned else ""
    block = {"BLOCK": 1024, "ALIGNED": aligned}
    yield f"nonfinite/bf16{tail}", K.nonfinite_kernel, {**CHUNKS, "flags": "*i32", "G_DTYPE": "constexpr",
                                                        "BLOCK": "constexpr", "ALIGNED": "constexpr"}, \
        {"G_DTYPE": tl.bfloat16, **block}
    for p_dtype, name in ((tl.float32, "fp32"), (tl.bfloat16, "bf16")):
        for cautious in (False, True):
            tag = "cautious" if cautious else "decoupled"
            yield f"step/{name}/{tag}{tail}", K.step_kernel, step, {"P_DTYPE": p_dtype, "G_DTYPE": p_dtype,
                                                                    "USE_CLIP": True, "CAUTIOUS": cautious, **block}
            for use_adam in (False, True):
                yield (f"apply/{name}/{tag}/{'blend' if use_adam else 'ortho'}{tail}", K.apply_kernel, apply,
                       {"P_DTYPE": p_dtype, "USE_ADAM": use_adam, "CAUTIOUS": cautious, **block})
        yield f"adamw_step/{name}{tail}", K.adamw_step_kernel, adamw_step, {"P_DTYPE": p_dtype, "G_DTYPE": p_dtype,
                                                                            **block}
    for use_adam in (False, True):
        yield f"moments/bf16/{'blend' if use_adam else 'ortho'}{tail}", K.moments_kernel, moments, \
            {"G_DTYPE": tl.bfloat16, "S_DTYPE": tl.bfloat16, "USE_CLIP": True, "NESTEROV": True,
             "USE_ADAM": use_adam, **block}


def main(arch: int) -> dict[str, str]:
    target = GPUTarget("cuda", arch, 32)
    results = {}
    for name, fn, signature, constexprs in variants():
        try:
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target)
            results[name] = "ok" if compiled.asm.get("cubin") else "no cubin"
        except Exception as exc:  # report every failure, not just the first
            results[name] = f"{type(exc).__name__}: {str(exc)[-400:]}"
    return results


def accesses(arch: int) -> dict[str, dict[str, int]]:
    """Per variant, the count of each global load/store opcode in its SASS (``LDG.E`` 32-bit, ``LDG.E.128``…),
    compiled with its pointer arguments 16-byte aligned, as a launch specialises them (integer arguments are not
    specialised here, so the Newton–Schulz kernels' strides are unknown and their counts not a launch's)."""
    import re
    import subprocess
    import tempfile
    from collections import Counter

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    target, out = GPUTarget("cuda", arch, 32), {}
    with tempfile.TemporaryDirectory() as folder:
        for name, fn, signature, constexprs in variants():
            path = os.path.join(folder, "kernel.cubin")
            # as a launch on torch tensors specialises them: every pointer argument 16-byte aligned
            aligned = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values())
                       if kind.startswith("*")}
            with open(path, "wb") as file:
                file.write(triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned),
                                          target=target).asm["cubin"])
            sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
            out[name] = dict(Counter(re.findall(r"\b((?:LDG|STG)\.E[.\w]*)", sass)))
    return out


def _arch(argv: list[str]) -> tuple[int, bool]:
    """(architecture, whether --accesses was given) from the command line."""
    widths = "--accesses" in argv
    argv = [a for a in argv if a != "--accesses"]
    if len(argv) > 1 or (argv and not argv[0].isdigit()):
        print(f"compile_check: error: expected one CUDA architecture number such as 90, got {' '.join(argv)!r}",
              file=sys.stderr)
        sys.exit(2)
    return (int(argv[0]) if argv else 90), widths


if __name__ == "__main__":
    from fusedgate.kernels._interpret import INTERPRET

    arch, widths = _arch(sys.argv[1:])
    if INTERPRET:  # the kernels were defined for the interpreter: define them again for the compiler
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "fusedgate.kernels.compile_check", *sys.argv[1:]], env)
    print(json.dumps(accesses(arch) if widths else main(arch)))

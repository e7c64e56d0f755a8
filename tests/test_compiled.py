"""The compiled backend against the eager reference, teacher-forced: every step the same gradients go into
both, the step's results are compared, then the compiled optimizer's parameters and state are set to the
reference's again (Muon's orthogonaliser amplifies an ulp of difference, so free-running trajectories would
test chaos, not the backend).

Tolerances per step (max |a − b| / max |b| per tensor): parameters ≤ 1e-6, moments and sensors ≤ 1e-5, decay
products ≤ 1e-12 — the compiled updates are always masked and fused by inductor, so an ulp differs here
and there. A schedule writing lr and momentum (and OptBrain's modulation) every step compiles nothing new.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import max_rel_diff, resynchronise

from fusedgate import FusedGate, GateSpec

TOL = {"param": 1e-6, "exp_avg": 1e-5, "exp_avg_sq": 1e-5, "normuon_sq": 1e-5, "sensors": 1e-5,
       "m_decay_prod": 1e-12, "v_decay_prod": 1e-12, "step": 0.0, "skipped": 0.0}


def model_groups(seed: int = 0) -> tuple[list[torch.nn.Parameter], list[dict]]:
    """Three 8×8 and two 16×8 matrices (Muon groups), an embedding and a vector (AdamW): nanochat's format."""
    gen = torch.Generator().manual_seed(seed)
    new = lambda *shape: torch.nn.Parameter(torch.randn(*shape, generator=gen) * 0.3)
    square, tall, embed, vector = [new(8, 8) for _ in range(3)], [new(16, 8) for _ in range(2)], new(32, 8), new(8)
    groups = [dict(kind="adamw", params=[embed], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
              dict(kind="adamw", params=[vector], lr=0.004, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
              dict(kind="muon", params=square, lr=0.02, momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=0.1),
              dict(kind="muon", params=tall, lr=0.02, momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=0.1)]
    return [embed, vector, *square, *tall], groups


def schedule(opt: FusedGate, step: int, modulated: bool = False) -> None:
    """lr and momentum written every step; ``modulated``: OptBrain's per-group modulation too, different in
    each Muon group and changing every step."""
    for gi, group in enumerate(opt.param_groups):
        group["lr"] = group["initial_lr"] * (1.0 - step / 20)
        if group["kind"] == "muon":
            group["momentum"] = 0.85 + 0.01 * step
            if modulated:
                group.update(gate_scale=1.0 + 0.05 * step * gi, gate_clip=1.0 + 0.1 * gi, gate_dampen=0.1 * (step % 2))


@pytest.mark.parametrize("preset, modulated", [("nanochat", False), ("gated", False), ("gated", True)])
def test_compiled_matches_the_eager_reference_step_by_step(preset, modulated):
    torch._dynamo.reset()
    spec = getattr(GateSpec, preset)()
    ref_params, ref_groups = model_groups()
    cmp_params, cmp_groups = model_groups()
    ref = FusedGate(ref_groups, spec=spec, total_steps=20, backend="reference")
    cmp = FusedGate(cmp_groups, spec=spec, total_steps=20, backend="compiled")
    for opt in (ref, cmp):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    graphs = None
    for step in range(6):
        gen = torch.Generator().manual_seed(100 + step)
        grads = [torch.randn(p.shape, generator=gen) * (1 + step) for p in ref_params]
        if step == 3:
            grads[2][0, 0] = float("nan")   # a skipped matrix
        for params, opt in ((ref_params, ref), (cmp_params, cmp)):
            schedule(opt, step, modulated)
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step(loss=torch.tensor(3.0 - 0.1 * step))
        for a, b in zip(cmp_params, ref_params):
            assert max_rel_diff(a.detach(), b.detach()) <= TOL["param"], step
            for key, value in ref.state[b].items():
                assert max_rel_diff(cmp.state[a][key], value) <= TOL[key], (step, key)
        resynchronise(cmp_params, cmp, ref_params, ref)
        if step == 1:
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs   # the schedule recompiled nothing
    assert cmp.skipped_steps() == ref.skipped_steps()


FALLBACK = textwrap.dedent("""
    import warnings
    import torch
    import torch._inductor.config as config
    config.cpp.cxx = ("/nonexistent/c++",)   # no usable C++ compiler
    from fusedgate import FusedGate, GateSpec
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for backend in ("reference", "compiled"):
            torch.manual_seed(0)
            params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(7))]
            opt = FusedGate(params, spec=GateSpec.gated(), backend=backend, total_steps=5)
            for step in range(3):
                for p in params:
                    p.grad = torch.ones_like(p) * (step + 1)
                opt.step(loss=torch.tensor(1.0))
            results.append(torch.cat([p.detach().reshape(-1) for p in params]))
    assert torch.equal(results[0], results[1])
    messages = [str(w.message) for w in caught if "backend='compiled'" in str(w.message)]
    assert len(messages) == 1 and "\\n" not in messages[0], messages
    print(messages[0])
""")


def test_without_a_compiler_the_compiled_backend_is_the_eager_one_with_one_warning(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.compile is unavailable here" in done.stdout


def test_a_user_compiled_training_step_with_the_compiled_backend():
    """The user compiles the whole training step (model, backward, opt.step): FusedGate's step is a graph
    break that runs its own compiled updates; the result is the eager training step's up to the compiled
    model's own gradient rounding (≤ 1e-5, as in test_optimizer_robustness), every state advanced."""
    results = []
    for compile_it in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        opt = FusedGate(model.parameters(), spec=GateSpec.gated(), total_steps=5, backend="compiled")

        def train_step(x, y, model=model, opt=opt):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step(loss=loss.detach())
            opt.zero_grad()

        fn = torch.compile(train_step) if compile_it else train_step
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            x = torch.randn(16, 8, generator=gen)
            fn(x, torch.sin(x[:, :4]))
        results.append([p.detach().clone() for p in model.parameters()])
        assert all(float(opt.state[p]["step"]) == 4 for p in model.parameters())
    assert max(max_rel_diff(a, b) for a, b in zip(results[1], results[0])) <= 1e-5


def test_more_shapes_than_dynamos_recompile_limit():
    """Nine AdamW parameters of nine shapes: nine graphs of one compiled function (dynamo's default limit is 8)
    step like the eager reference instead of failing mid-step."""
    gen = torch.Generator().manual_seed(3)
    runs = []
    for backend in ("compiled", "reference"):
        params = [torch.nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(n))) for n in range(3, 12)]
        opt = FusedGate([dict(kind="adamw", params=params, lr=1e-2, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)],
                        spec=GateSpec.nanochat(), backend=backend)
        gen.manual_seed(3)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):
        assert max_rel_diff(a.detach(), b.detach()) <= 1e-6

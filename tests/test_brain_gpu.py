"""OptBrain's torch path on a CUDA device: run with ``pytest -m gpu`` on a machine with a GPU.

The features measured on the device against the same measurements on the CPU (float32 reductions in
another order: rtol 1e-4), and a learning brain whose clip acts that synchronises with the host only on
the window's last step (``torch.cuda.set_sync_debug_mode``: an error on any other step).
"""

import numpy as np
import pytest
import torch

from fusedgate import OptBrain
from fusedgate.brain.torch_features import TorchFeatures

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def two_groups(device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [[(32, 16), (32,)], [(16, 32)]]
    return [[torch.nn.Parameter(torch.randn(*s, generator=gen).to(device)) for s in group] for group in shapes]


def test_device_features_match_the_cpu():
    on = {dev: two_groups(dev) for dev in ("cpu", "cuda")}
    feats = {dev: TorchFeatures(groups, window=4, sketch_size=16, seed=3) for dev, groups in on.items()}
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        grads = [torch.randn(p.shape, generator=gen) for group in on["cpu"] for p in group]
        for dev, groups in on.items():
            f, params = feats[dev], [p for group in groups for p in group]
            for p, g in zip(params, grads):
                p.grad = g.to(dev)
            f.record_loss(step % 4, 1.0 / (step + 1))
            if step % 4 == 3:
                f.sense()
            if step in (5, 6):
                f.clip_(np.array([np.inf, 100.0]))   # group 1's norm measured (factor 1)
            f.end_step()
            with torch.no_grad():
                for p in params:
                    p.sub_(0.01 * p.grad)
        if step % 4 == 3:
            (lc, fc), (ld, fd) = feats["cpu"].read_window(), feats["cuda"].read_window()
            np.testing.assert_array_equal(lc, ld)
            np.testing.assert_allclose(fd, fc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats["cuda"].running_norm().cpu(), feats["cpu"].running_norm(), rtol=1e-4, atol=0.0)
    assert feats["cuda"].norm_count.tolist() == feats["cpu"].norm_count.tolist() == [3, 5]


def test_a_learning_brain_syncs_only_at_window_ends():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).cuda()
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}]
    brain = OptBrain(torch.optim.AdamW(groups, lr=1e-2), window=5, warmup_windows=1, alpha_start=1.0,
                     z_shrink=10.0, explore=4.0)
    x, y = torch.randn(64, 16, device="cuda"), torch.randn(64, 4, device="cuda")
    clipping_steps = 0
    for t in range(60):
        loss = ((model(x[t % 48:t % 48 + 16]) - y[t % 48:t % 48 + 16]) ** 2).mean()
        brain.zero_grad()
        loss.backward()
        window_end = t % 5 == 4
        torch.cuda.set_sync_debug_mode("default" if window_end else "error")
        try:
            brain.step(loss=loss.detach())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        clipping_steps += brain._plan is not None and brain._plan[1] is not None
    assert brain.report()["cycles"] >= 2 and clipping_steps > 0

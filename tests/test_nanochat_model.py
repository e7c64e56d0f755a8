"""NanoChat model, baseline optimizer and schedule: shapes, gradients and numerics against
independent references (SVD polar factor, torch.optim.AdamW, hand-computed schedule values)."""

import math

import pytest
import torch

from fusedgate.nanochat.model import GPT, SOFTCAP, GPTConfig, apply_rotary, rotary_tables
from fusedgate.nanochat.muon import MuonAdamW, muon_direction, polar_express
from fusedgate.nanochat.schedule import Schedule


def small_model(seed=0, vocab=257, seq=16):
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_depth(2, vocab, seq, aspect_ratio=32, head_dim=16))


def test_width_from_depth():
    cfg = GPTConfig.from_depth(20, 1000, 128)  # 20·64 = 1280, already a multiple of 64
    assert (cfg.n_embd, cfg.n_head, cfg.n_layer) == (1280, 20, 20)
    cfg = GPTConfig.from_depth(3, 1000, 128, aspect_ratio=50, head_dim=64)  # 150 → rounded up to 192
    assert (cfg.n_embd, cfg.n_head) == (192, 3)


def test_shapes_loss_and_backward():
    model = small_model()
    x = torch.randint(0, 257, (3, 16))
    y = torch.randint(0, 257, (3, 16))
    logits = model(x)
    assert logits.shape == (3, 16, 257)
    assert logits.abs().max() <= SOFTCAP
    per_token = model(x, y, reduction="none")
    assert per_token.shape == (3, 16)
    loss = model(x, y)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 257), y.reshape(-1))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(per_token.mean(), loss)
    # at init the head is ~0, so the loss is ~ln(vocab)
    assert abs(loss.item() - math.log(257)) < 0.05
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # zero-initialised output projections still get gradients through the residual stream
    assert model.blocks[0].mlp.c_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causal():
    """Changing a later token never changes earlier logits."""
    model = small_model()
    with torch.no_grad():  # make attention and MLP non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, 257, (1, 16))
    x2 = x.clone()
    x2[0, 10] = (x[0, 10] + 1) % 257
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_rotary_depends_on_relative_position_only():
    cos, sin = rotary_tables(32, 8)
    q = torch.randn(1, 1, 1, 8).expand(1, 32, 1, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 32, 1, 8)
    rq, rk = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    dot = lambda i, j: (rq[0, i, 0] * rk[0, j, 0]).sum().item()
    assert dot(3, 1) == pytest.approx(dot(12, 10), abs=1e-4)
    assert dot(7, 7) == pytest.approx((q[0, 0, 0] * k[0, 0, 0]).sum().item(), abs=1e-4)  # offset 0: no rotation
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps norms


def test_param_groups_cover_every_param_once():
    model = small_model()
    for kind in ("muon", "adamw"):
        groups = model.param_groups(0.3, 0.008, 0.02, 0.1, matrix_kind=kind)
        seen = [p for g in groups for p in g["params"]]
        assert len(seen) == len(set(seen)) == len(list(model.parameters()))
        for g in groups:
            assert len(g["param_names"]) == len(g["params"])
            if g["kind"] == "muon":
                assert len({tuple(p.shape) for p in g["params"]}) == 1
                assert set(g) >= {"lr", "momentum", "ns_steps", "beta2", "weight_decay"}
            else:
                assert set(g) >= {"lr", "betas", "eps", "weight_decay"}
    head = model.param_groups(0.3, 0.008, 0.02, 0.0)[0]
    assert head["param_names"] == ["lm_head.weight"]
    assert head["lr"] == pytest.approx(0.008 * (64 / 768) ** -0.5)  # nanochat's 1/sqrt(d_model) scaling


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (48, 48)])
def test_polar_express_approximates_the_polar_factor(shape):
    torch.manual_seed(1)
    # well-conditioned input: singular values in [0.2, 1]
    u, _, vh = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
    s = torch.linspace(0.2, 1.0, min(shape))
    g = u @ torch.diag(s) @ vh
    x = polar_express(g[None] * 3.7, 5)[0]
    polar = u @ vh
    assert ((x - polar).norm() / polar.norm()).item() < 0.12
    sv = torch.linalg.svdvals(x)
    assert sv.min() > 0.7 and sv.max() < 1.25


def test_muon_direction_norm_and_buffers():
    torch.manual_seed(2)
    grad = torch.randn(3, 40, 24)
    buf = torch.zeros_like(grad)
    second = torch.zeros(3, 40, 1)
    d = muon_direction(grad.clone(), buf, second, momentum=0.9, beta2=0.95, ns_steps=5)
    torch.testing.assert_close(buf, 0.1 * grad)  # buf ← 0.9·0 + 0.1·g
    # NorMuon keeps the Muon+ Frobenius norm sqrt(min(r, c))
    torch.testing.assert_close(d.norm(dim=(-2, -1)), torch.full((3,), 24**0.5), rtol=1e-4, atol=1e-4)
    assert (second > 0).all()


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(3)
    p1 = torch.nn.Parameter(torch.randn(7, 5))
    p2 = torch.nn.Parameter(p1.detach().clone())
    ours = MuonAdamW([dict(kind="adamw", params=[p1], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)])
    ref = torch.optim.AdamW([p2], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(7, 5)
        p1.grad, p2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


def test_muon_step_matches_formula():
    """One Muon step from zero state: p ← p − lr·sqrt(max(1, r/c))·d − lr·wd·p·[d·p ≥ 0]."""
    torch.manual_seed(4)
    p = torch.nn.Parameter(torch.randn(48, 16))
    p0 = p.detach().clone()
    p.grad = torch.randn(48, 16)
    opt = MuonAdamW([dict(kind="muon", params=[p], lr=0.02, momentum=0.9, ns_steps=5, beta2=0.95,
                          weight_decay=0.5)])
    opt.step()
    d = muon_direction(p.grad.clone()[None], torch.zeros(1, 48, 16), torch.zeros(1, 48, 1), 0.9, 0.95, 5)[0]
    lr = 0.02 * math.sqrt(48 / 16)
    expected = p0 - lr * d - lr * 0.5 * p0 * ((d * p0) >= 0)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="share one shape"):
        MuonAdamW([dict(kind="muon", params=[torch.nn.Parameter(torch.zeros(2, 3)),
                                              torch.nn.Parameter(torch.zeros(3, 2))], lr=0.1)])


def test_schedule_values():
    s = Schedule(total_steps=100, warmup_steps=10, warmdown_ratio=0.5, final_lr_frac=0.1, momentum_warmup=20)
    assert s.lr_multiplier(0) == pytest.approx(0.1)
    assert s.lr_multiplier(9) == pytest.approx(1.0)
    assert s.lr_multiplier(50) == 1.0
    assert s.lr_multiplier(75) == pytest.approx(0.5 + 0.5 * 0.1)  # halfway down the warm-down
    assert s.lr_multiplier(100) == pytest.approx(0.1)
    assert s.muon_momentum(0) == pytest.approx(0.85)
    assert s.muon_momentum(10) == pytest.approx(0.91)
    assert s.muon_momentum(30) == pytest.approx(0.97)
    assert s.muon_momentum(75) == pytest.approx(0.935)
    assert s.weight_decay_multiplier(0) == 1.0
    assert s.weight_decay_multiplier(50) == pytest.approx(0.5)
    groups = [dict(initial_lr=0.2, initial_weight_decay=0.3, lr=0, weight_decay=0, momentum=0),
              dict(initial_lr=0.1, initial_weight_decay=0.3, lr=0, weight_decay=0.3)]
    s.apply(groups, ["muon", "adamw"], 75)
    assert groups[0]["lr"] == pytest.approx(0.2 * 0.55)
    assert groups[0]["momentum"] == pytest.approx(0.935)
    assert groups[0]["weight_decay"] == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert groups[1]["weight_decay"] == 0.3  # AdamW groups keep their weight decay

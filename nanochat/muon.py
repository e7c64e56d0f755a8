"""The baseline optimizer: nanochat's MuonAdamW, re-implemented (single device, no sharding).

Param groups are nanochat's dicts:
``dict(kind='adamw', params, lr, betas, eps, weight_decay)`` and
``dict(kind='muon', params, lr, momentum, ns_steps, beta2, weight_decay)`` (all params of a muon
group share one shape and are updated as one stacked tensor).

AdamW groups (decoupled weight decay, bias-corrected moments)::

    p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
    p ← p − lr/(1−β1ᵗ) · m / (sqrt(v/(1−β2ᵗ)) + eps)

Muon groups, for a stack of K matrices of shape (r, c), in order:

1. Nesterov momentum: buf ← μ·buf + (1−μ)·g;  u ← (1−μ)·g + μ·buf.
2. MuonEq row equilibration: each row of u is rescaled to the mean row norm ‖u‖_F/√r.
3. Polar Express orthogonalisation: X ← u/(1.01‖u‖_F + 1e-6), then for each of ``ns_steps``
   coefficient triples (a, b, c) (Amsel et al. 2025, arXiv:2505.16932):
   A = X Xᵀ, X ← a·X + (b·A + c·A²)·X (computed on XᵀX for tall matrices).
4. Muon+ renormalisation: ‖X‖_F ← sqrt(min(r, c)).
5. NorMuon variance reduction (arXiv:2510.05491): a factored second moment
   s ← β2·s + (1−β2)·mean(X², over the longer axis), X ← X/sqrt(s), then X is rescaled so
   that its Frobenius norm is unchanged by this step.
6. Cautious weight decay and the update, with the shape factor sqrt(max(1, r/c)):
   p ← p − lr'·X − lr'·wd·p·[X·p ≥ 0],  lr' = lr·sqrt(max(1, r/c)).

Newton–Schulz runs in bf16 on CUDA and fp32 elsewhere. Not implemented from nanochat: the
distributed (ZeRO-2) sharding and the torch.compile'd fused kernels.
"""

from __future__ import annotations

import torch

# (a, b, c) per iteration, for 5 iterations (safety factor 2e-2, cushion 2), from arXiv:2505.16932.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def polar_express(u: torch.Tensor, ns_steps: int) -> torch.Tensor:
    """Approximate the orthogonal polar factor of each matrix in the stack u (K, r, c)."""
    x = u.bfloat16() if u.is_cuda else u.float()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    tall = x.size(-2) > x.size(-1)
    for a, b, c in POLAR_EXPRESS[:ns_steps]:
        gram = x.mT @ x if tall else x @ x.mT
        poly = b * gram + c * (gram @ gram)
        x = a * x + (x @ poly if tall else poly @ x)
    return x.float()


def muon_direction(grad: torch.Tensor, momentum_buffer: torch.Tensor, second_moment: torch.Tensor,
                   momentum: float, beta2: float, ns_steps: int) -> torch.Tensor:
    """Steps 1–5 above for a stack (K, r, c); updates the two buffers in place."""
    momentum_buffer.lerp_(grad, 1 - momentum)
    u = grad.lerp(momentum_buffer, momentum).float()
    # MuonEq: equalise row norms to the mean row norm
    target = u.norm(dim=(-2, -1), keepdim=True) / u.size(-2) ** 0.5
    u = u * (target / u.norm(dim=-1, keepdim=True).clamp_min(1e-6))
    x = polar_express(u, ns_steps)
    # Muon+: snap the Frobenius norm to that of a semi-orthogonal matrix
    x = x * (min(x.size(-2), x.size(-1)) ** 0.5 / x.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))
    # NorMuon: per-row (or per-column) second moment, Frobenius norm preserved
    axis = -1 if x.size(-2) >= x.size(-1) else -2
    v_mean = x.square().mean(dim=axis, keepdim=True)
    norm_before = (v_mean.sum(dim=(-2, -1), keepdim=True) * x.size(axis)).sqrt()
    second_moment.lerp_(v_mean, 1 - beta2)
    scale = second_moment.clamp_min(1e-10).rsqrt()
    norm_after = ((v_mean * x.size(axis)) * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return x * (scale * norm_before / norm_after.clamp_min(1e-10))


class MuonAdamW(torch.optim.Optimizer):
    """Muon (with Polar Express, MuonEq, Muon+, NorMuon, cautious wd) for ``kind='muon'``
    groups, AdamW for ``kind='adamw'`` groups. ``step(loss=...)`` accepts and ignores a loss
    so the trainer can call every optimizer the same way."""

    def __init__(self, param_groups: list[dict]):
        for group in param_groups:
            if group.get("kind") not in ("adamw", "muon"):
                raise ValueError(f"param group kind must be 'adamw' or 'muon', got {group.get('kind')!r}")
            if group["kind"] == "muon" and len({tuple(p.shape) for p in group["params"]}) != 1:
                raise ValueError("all params of a muon group must share one shape")
        super().__init__(param_groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._adamw(group)
            else:
                self._muon(group)
        return result

    def _adamw(self, group: dict) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            self._adamw_update(p, state, group)

    def _adamw_update(self, p: torch.Tensor, state: dict, group: dict) -> None:
        """AdamW's update of p in place at step t = state['step'] (nanochat's op order)."""
        beta1, beta2 = group["betas"]
        t = state["step"]
        p.mul_(1 - group["lr"] * group["weight_decay"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].lerp_(p.grad.square(), 1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))

    def _muon(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        rows, cols = params[0].shape
        state = self.state[group["params"][0]]
        if not state:
            n = len(group["params"])
            state["momentum_buffer"] = torch.zeros(n, rows, cols, device=params[0].device)
            moment_shape = (n, rows, 1) if rows >= cols else (n, 1, cols)
            state["second_momentum_buffer"] = torch.zeros(moment_shape, device=params[0].device)
        if len(params) != len(group["params"]):
            raise RuntimeError("Muon groups need a gradient for every param of the group")
        grads = torch.stack([p.grad for p in params]).float()
        direction = muon_direction(grads, state["momentum_buffer"], state["second_momentum_buffer"],
                                   group["momentum"], group["beta2"], group["ns_steps"])
        lr = group["lr"] * max(1.0, rows / cols) ** 0.5
        stacked = torch.stack(params)
        cautious = (direction * stacked >= 0).to(stacked.dtype)
        stacked.sub_(lr * direction.to(stacked.dtype) + lr * group["weight_decay"] * stacked * cautious)
        torch._foreach_copy_(params, list(stacked.unbind(0)))

"""A nanochat-style GPT, written for this project.

Architecture (facts from karpathy/nanochat, code our own):

* token embedding ``wte`` and output head ``lm_head`` are separate (untied) matrices;
* no positional embedding: rotary embeddings rotate each query/key pair of channels
  (x1, x2) by the angle θ_t,i = t · base^(-2i/D): (x1, x2) → (x1·cos + x2·sin, −x1·sin + x2·cos);
* QK-norm: queries and keys are RMS-normalised per head after the rotation;
* RMSNorm without learnable parameters, rms(x) = x / sqrt(mean(x²) + ε), before every
  attention and MLP block, after the embedding and before the head;
* MLP with a squared ReLU: W₂ · relu(W₁ x)²;
* no biases anywhere;
* logit soft-capping: logits = c · tanh(logits / c), c = 15;
* width derived from depth: n_embd = depth · aspect_ratio rounded up to a multiple of head_dim,
  n_head = n_embd / head_dim.

The vocabulary is padded to a multiple of 64 for fast matmuls; the padded logits are dropped
before the loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SOFTCAP = 15.0
ROPE_BASE = 100_000.0
QK_SCALE = 1.2  # queries and keys are scaled by this after QK-norm (sharper attention)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    sequence_len: int
    n_layer: int
    n_head: int
    n_embd: int

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int, sequence_len: int, aspect_ratio: int = 64,
                   head_dim: int = 64) -> GPTConfig:
        """Width from depth: n_embd = ceil(depth·aspect_ratio / head_dim)·head_dim."""
        n_embd = -(-depth * aspect_ratio // head_dim) * head_dim
        return cls(vocab_size=vocab_size, sequence_len=sequence_len, n_layer=depth,
                   n_head=n_embd // head_dim, n_embd=n_embd)

    def to_dict(self) -> dict:
        return asdict(self)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (seq_len, head_dim/2) for angles t · base^(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[..., i], x[..., i + D/2]); x is (B, T, H, D), cos/sin are (T, D/2)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q = rms_norm(apply_rotary(q, cos, sin)) * QK_SCALE
        k = rms_norm(apply_rotary(k, cos, sin)) * QK_SCALE
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn = Attention(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, pad_vocab_to: int = 64):
        super().__init__()
        self.config = config
        padded_vocab = -(-config.vocab_size // pad_vocab_to) * pad_vocab_to
        self.wte = nn.Embedding(padded_vocab, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, padded_vocab, bias=False)
        cos, sin = rotary_tables(config.sequence_len, config.n_embd // config.n_head)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat's init: wte ~ N(0, 0.8²), lm_head ~ N(0, 0.001²); q, k, v ~ U(±√3/√d)
        (std 1/√d), MLP input at 0.4× that, both output projections zero."""
        nn.init.normal_(self.wte.weight, std=0.8)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = math.sqrt(3.0 / self.config.n_embd)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * bound, 0.4 * bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, vocab) without targets; otherwise the cross-entropy in nats
        (a scalar for reduction='mean', (B, T) for reduction='none')."""
        T = idx.size(1)
        if T > self.config.sequence_len:
            raise ValueError(f"sequence of length {T} exceeds the model's context {self.config.sequence_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = rms_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(rms_norm(x))[..., : self.config.vocab_size].float()
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss.view_as(targets) if reduction == "none" else loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def matrix_params(self) -> list[nn.Parameter]:
        """The 2-D weights inside the transformer blocks (Muon's domain)."""
        return list(self.blocks.parameters())

    def param_groups(self, embedding_lr: float, unembedding_lr: float, matrix_lr: float,
                     weight_decay: float, matrix_kind: str = "muon", adam_matrix_lr: float = 3e-3) -> list[dict]:
        """nanochat-style optimizer groups (the same list feeds MuonAdamW, FusedGate and AdamW).

        AdamW groups scale their lr by (n_embd/768)^-0.5 as in nanochat:
          lm_head: lr=unembedding_lr·s, betas (0.8, 0.96), eps 1e-10, wd 0.01
          wte:     lr=embedding_lr·s,   betas (0.8, 0.995), eps 1e-10, wd 0.001
        Matrix params: one ``kind='muon'`` group per shape (lr, momentum 0.95, ns_steps 5,
        beta2 0.9, weight_decay), or with ``matrix_kind='adamw'`` a single AdamW group with
        ``adam_matrix_lr``, betas (0.9, 0.95).
        Every group carries ``param_names`` (torch's key for parameter names), used for logging.
        """
        names = {p: n for n, p in self.named_parameters()}
        scale = (self.config.n_embd / 768) ** -0.5
        groups = [
            dict(kind="adamw", params=[self.lm_head.weight], lr=unembedding_lr * scale, betas=(0.8, 0.96),
                 eps=1e-10, weight_decay=0.01),
            dict(kind="adamw", params=[self.wte.weight], lr=embedding_lr * scale, betas=(0.8, 0.995),
                 eps=1e-10, weight_decay=0.001),
        ]
        matrices = self.matrix_params()
        if matrix_kind == "muon":
            for shape in sorted({tuple(p.shape) for p in matrices}):
                same = [p for p in matrices if tuple(p.shape) == shape]
                groups.append(dict(kind="muon", params=same, lr=matrix_lr, momentum=0.95, ns_steps=5, beta2=0.9,
                                   weight_decay=weight_decay))
        elif matrix_kind == "adamw":
            groups.append(dict(kind="adamw", params=matrices, lr=adam_matrix_lr, betas=(0.9, 0.95), eps=1e-10,
                               weight_decay=weight_decay))
        else:
            raise ValueError(f"matrix_kind must be 'muon' or 'adamw', got {matrix_kind!r}")
        for group in groups:
            group["param_names"] = [names[p] for p in group["params"]]
        return groups

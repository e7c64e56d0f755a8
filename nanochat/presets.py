"""Training presets: model size, batch, horizon and nanochat's hyperparameters per scale.

Learning rates are nanochat's defaults (embedding 0.3, unembedding 0.008, matrix 0.02; AdamW
groups scaled by (n_embd/768)^-0.5 inside ``GPT.param_groups``). nanochat also scales lrs by
sqrt(B/524288) and its Muon weight decay (0.28) by batch and horizon; those scaling laws were fitted
for d12+ runs of ~0.5M-token batches, so the small presets set the Muon weight decay directly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fusedgate.nanochat.errors import TrainError


@dataclass(frozen=True)
class Preset:
    name: str
    depth: int
    seq_len: int
    batch_size: int          # sequences per step (no gradient accumulation)
    steps: int
    eval_every: int
    eval_tokens: int
    aspect_ratio: int = 64
    head_dim: int = 64
    embedding_lr: float = 0.3
    unembedding_lr: float = 0.008
    matrix_lr: float = 0.02
    adam_matrix_lr: float = 3e-3  # matrices under --optimizer adamw
    weight_decay: float = 0.0     # Muon (cautious) weight decay, cosine-annealed to 0
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65
    final_lr_frac: float = 0.05
    momentum_warmup: int = 400
    max_corpus_bytes: int = 256 * 1024 * 1024
    checkpoint_every: int = 0     # 0: only at the end
    device_hint: str = "cpu"

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


PRESETS: dict[str, Preset] = {
    # unit tests: seconds on one CPU core
    "test": Preset("test", depth=1, seq_len=32, batch_size=4, steps=12, eval_every=6, eval_tokens=512,
                   aspect_ratio=32, head_dim=16, warmup_steps=2, momentum_warmup=6),
    # CPU: a couple of minutes per optimizer on 2 cores, loss clearly falls
    "tiny": Preset("tiny", depth=2, seq_len=128, batch_size=16, steps=300, eval_every=50, eval_tokens=32_768,
                   warmup_steps=15, momentum_warmup=100, checkpoint_every=100),
    # the search's transfer configuration: tiny at twice the depth (a held-out architecture)
    "tiny-d4": Preset("tiny-d4", depth=4, seq_len=128, batch_size=16, steps=300, eval_every=50, eval_tokens=32_768,
                      warmup_steps=15, momentum_warmup=100, checkpoint_every=100),
    # GPU presets
    "small": Preset("small", depth=6, seq_len=512, batch_size=64, steps=2000, eval_every=200,
                    eval_tokens=1_048_576, warmup_steps=40, momentum_warmup=300, weight_decay=0.1,
                    checkpoint_every=500, device_hint="cuda"),
    "d12": Preset("d12", depth=12, seq_len=2048, batch_size=32, steps=5000, eval_every=250,
                  eval_tokens=4_194_304, weight_decay=0.2, checkpoint_every=1000,
                  max_corpus_bytes=2 * 1024**3, device_hint="cuda"),
    "d20": Preset("d20", depth=20, seq_len=2048, batch_size=32, steps=10000, eval_every=250,
                  eval_tokens=4_194_304, weight_decay=0.2, checkpoint_every=1000,
                  max_corpus_bytes=4 * 1024**3, device_hint="cuda"),
}


def get_preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise TrainError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]

"""The trainer: ``train(TrainConfig) -> TrainResult`` (the contract the search harness and the
OptBrain eval use).

One step t (0 ≤ t < N): batch(seed, t) → loss → backward → schedule(t) sets every group's lr
(and Muon momentum / weight decay) → ``opt.step`` → zero grads. Validation runs before step t when
t % eval_every == 0 and after the last step; val bpb = Σ nats / (ln 2 · Σ target bytes). A
checkpoint (model, optimizer, step, curves) is written after validation at t % checkpoint_every == 0
and at the end, so resuming at step t replays exactly the steps t, t+1, ... of the uninterrupted run.
A non-finite loss stops the run before the optimizer step, keeping the last good checkpoint.

Data parallel: when ``torch.distributed`` is initialised with N > 1 ranks (``fusedgate train --nproc N`` or
``torchrun``), each rank takes rows [r·B/N, (r+1)·B/N) of every batch (B divisible by N). FusedGate runs
``distributed='zero2'`` (it averages the gradients and shards its state, nanochat's pattern); the baseline
and AdamW run under DDP. The logged loss is the mean over the ranks, every rank validates on the whole
validation set (identical models: identical results), rank 0 alone writes; checkpoints hold the full
optimizer state (gathered), so a run resumes at any N. FusedGate's gate records list the parameters that
rank 0 owns.

Final evaluation: with ``final_eval_tokens`` set, the last step is also evaluated on that many val
tokens in windows spread evenly over the whole val split (``val_batches_spread``): ``final_val_bpb`` is
that value; the curve keeps the small (prefix) set's value so that it stays one consistent series.
``final_val_se`` is the val-set sampling error of ``final_val_bpb`` (the batch-means standard error of
the ratio estimator Σ nats / Σ bytes, see ``sampling_error``); ``final_val_batches`` keeps the
per-batch sums, so that two runs scored on the same val set can be compared batch by batch (the
sampling error of a paired difference is far smaller than that of a level).

Timing: ``wall_s`` is the summed wall time of the training steps (no evaluation, no checkpoints);
``tokens_per_s`` is trained tokens / wall_s, leaving out the first step of the run (warm-up,
compilation) when there is more than one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fusedgate.files import WriteError, check_writable_folder
from fusedgate.nanochat.checkpoint import FILENAME as CHECKPOINT_FILENAME
from fusedgate.nanochat.checkpoint import check_compatible, load_checkpoint, one_line_reason, save_checkpoint
from fusedgate.nanochat.data import check_size, load_data, train_batch, val_batches, val_batches_spread
from fusedgate.nanochat.errors import TrainError
from fusedgate.nanochat.metrics import FILENAME as METRICS_FILENAME
from fusedgate.nanochat.metrics import MetricsLog
from fusedgate.nanochat.model import GPT, GPTConfig
from fusedgate.nanochat.muon import MuonAdamW
from fusedgate.nanochat.presets import Preset, get_preset
from fusedgate.nanochat.schedule import Schedule
from fusedgate.spec import GateSpec

OPTIMIZERS = ("baseline", "fusedgate", "adamw")
MAX_STEPS = 10**9
MAX_SEED = 2**64 - 1  # torch.manual_seed's range (numpy's default_rng takes any non-negative int)


@dataclass
class TrainConfig:
    preset: str = "tiny"            # "test", "tiny" (CPU), "small", "d12", "d20" (GPU)
    optimizer: str = "baseline"     # "baseline" (nanochat Muon+AdamW) | "fusedgate" | "adamw"
    spec: GateSpec | None = None    # fusedgate only; None -> GateSpec.default() (as the CLI)
    steps: int | None = None        # None -> the preset's default
    seed: int = 0
    device: str = "cpu"
    data: str | None = None         # None -> the embedded stdlib corpus
    out_dir: str | None = None      # None -> write nothing to disk
    eval_every: int | None = None   # None -> preset default
    progress: bool = True           # tqdm bar
    gate_log_every: int = 10        # steps between FusedGate gate_state() records
    tokenizer: str = "byte"         # "byte" or "bpe:N"
    compile: bool = False           # torch.compile the model (GPU)
    resume: str | None = None       # a checkpoint file or run directory to continue (steps may extend its run)
    stop_at: int | None = None      # stop (with a checkpoint) at this step, as if interrupted
    checkpoint_every: int | None = None  # None -> preset default (0: only at the end)
    lr_scale: float = 1.0           # multiplies every group's lr (for lr sweeps)
    final_eval_tokens: int | None = None  # None -> the curve's val set; N: N tokens spread over all of val
    overwrite: bool = False         # allow out_dir to already hold a run
    label: str | None = None        # this run's name in comparisons (None -> the optimizer)

    @property
    def name(self) -> str:
        """The run's name in tables and plots: its label, else its optimizer."""
        return self.label or self.optimizer

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spec"] = self.spec.to_dict() if self.spec is not None else None
        return d


@dataclass
class TrainResult:
    config: TrainConfig
    final_val_bpb: float            # nan if diverged
    val_curve: list[dict]           # [{"step", "val_bpb", "wall_s", "tokens"}], step 0 and the last step included
    train_curve: list[dict]         # [{"step", "loss", "wall_s"}]
    tokens_per_s: float
    wall_s: float
    diverged: bool                  # a NaN/inf loss stopped the run
    corpus_fingerprint: str
    gate_trajectory: list[dict] = field(default_factory=list)  # [{"step", "params": opt.gate_state()}]
    steps_done: int = 0
    total_s: float = 0.0            # wall time of the whole call, evaluation and setup included
    resumed_wall_s: float = 0.0     # the part of wall_s trained before this call (from the checkpoint)
    n_params: int = 0
    tokenizer: str = "byte"
    device: str = "cpu"
    message: str = ""
    final_val_se: float = float("nan")  # val-set sampling error of final_val_bpb (bpb)
    final_val_tokens: int = 0           # tokens the final evaluation scored
    final_val_batches: list = field(default_factory=list)  # [[Σ nats, Σ bytes]] per final-eval batch

    def summary(self) -> dict[str, Any]:
        return {"optimizer": self.config.optimizer, "label": self.config.name, "preset": self.config.preset,
                "seed": self.config.seed, "steps": self.steps_done, "final_val_bpb": self.final_val_bpb,
                "final_val_se": self.final_val_se, "final_val_tokens": self.final_val_tokens, "wall_s": self.wall_s,
                "total_s": self.total_s, "tokens_per_s": self.tokens_per_s, "diverged": self.diverged,
                "corpus": self.corpus_fingerprint, "tokenizer": self.tokenizer, "n_params": self.n_params,
                "device": self.device, "message": self.message}


# --------------------------------------------------------------------------------------------- setup
def _check_config(config: TrainConfig) -> Preset:
    preset = get_preset(config.preset)
    if config.optimizer not in OPTIMIZERS:
        raise TrainError(f"unknown optimizer {config.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if config.spec is not None and not isinstance(config.spec, GateSpec):
        raise TrainError("spec must be a GateSpec")
    _check_int("steps", config.steps, 1, MAX_STEPS, optional=True)
    _check_int("seed", config.seed, 0, MAX_SEED)
    _check_int("eval_every", config.eval_every, 1, MAX_STEPS, optional=True)
    _check_int("checkpoint_every", config.checkpoint_every, 0, MAX_STEPS, optional=True, note=" (0: only at the end)")
    _check_int("gate_log_every", config.gate_log_every, 1, MAX_STEPS)
    _check_int("final_eval_tokens", config.final_eval_tokens, 1, 10**12, optional=True)
    if not (config.lr_scale > 0 and math.isfinite(config.lr_scale)):
        raise TrainError(f"lr_scale must be a positive number, got {config.lr_scale}")
    check_device(config.device)
    return preset


def _check_int(name: str, value, lo: int, hi: int, optional: bool = False, note: str = "") -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        shown = repr(value) if not isinstance(value, int) or value.bit_length() < 100 else "a huge number"
        raise TrainError(f"{name} must be an integer from {lo} to {hi}{note}, got {shown}")


def check_device(name: str) -> torch.device:
    """``torch.device(name)`` if this machine has it, else a TrainError naming what is available."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise TrainError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "mps":
        backend, count = torch.backends.mps, 1
    else:
        backend = getattr(torch, device.type, None)  # torch.cuda, torch.xpu, ...
        count = backend.device_count() if hasattr(backend, "device_count") else 0
    available = hasattr(backend, "is_available") and backend.is_available()
    if not available or (device.index is not None and device.index >= count):
        here = ["cpu"] + (["cuda" + (f":0..{torch.cuda.device_count() - 1}" if torch.cuda.device_count() > 1 else "")]
                          if torch.cuda.is_available() else []) + (["mps"] if torch.backends.mps.is_available() else [])
        raise TrainError(f"device {name!r} is not available on this machine (available: {', '.join(here)})")
    return device


def build_optimizer(name: str, groups: list[dict], spec: GateSpec | None, total_steps: int):
    if name == "baseline":
        return MuonAdamW(groups)
    if name == "adamw":
        return torch.optim.AdamW(groups)
    from fusedgate.optimizer import FusedGate

    return FusedGate(groups, spec=spec if spec is not None else GateSpec.default(), total_steps=total_steps,
                     distributed="zero2" if data_parallel()[1] > 1 else "auto")


def data_parallel() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return value
    import torch.distributed as dist

    total = value.detach().float().clone()
    dist.all_reduce(total)
    return total / world


def _group_kinds(optimizer, groups: list[dict]) -> list[str]:
    """The nanochat kind of each of the optimizer's groups, matched by parameter identity."""
    kind_of = {id(p): g["kind"] for g in groups for p in g["params"]}
    return [kind_of[id(g["params"][0])] for g in optimizer.param_groups]


@torch.no_grad()
def evaluate_batch_sums(model: GPT, batches, token_bytes: torch.Tensor, device: torch.device,
                        autocast) -> tuple[list[float], list[int]]:
    """Per batch: Σ nats over targets with token_bytes > 0, and Σ their bytes."""
    was_training = model.training
    model.eval()
    nats, nbytes = [], []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            loss = model(x, y, reduction="none")
        b = token_bytes[y]
        nats.append((loss.double() * (b > 0)).sum())
        nbytes.append(b.sum())
    model.train(was_training)
    return [float(n) for n in torch.stack(nats).tolist()], [int(n) for n in torch.stack(nbytes).tolist()]


def bits_per_byte(nats: list[float], nbytes: list[int]) -> float:
    return sum(nats) / (math.log(2) * max(sum(nbytes), 1))


def sampling_error(nats: list[float], nbytes: list[int]) -> float:
    """Standard error (bpb) of R = Σnᵢ / (ln2 · Σbᵢ) over m batches of consecutive val windows:
    SE² = Σ (nᵢ − R'·bᵢ)² / (m (m − 1) b̄²) / ln²2 with R' = Σn/Σb (the delta method for a ratio
    estimator; batches of consecutive windows absorb most of the within-document correlation).
    nan with fewer than 2 batches."""
    m = len(nats)
    if m < 2 or sum(nbytes) == 0:
        return float("nan")
    ratio = sum(nats) / sum(nbytes)
    mean_b = sum(nbytes) / m
    var = sum((n - ratio * b) ** 2 for n, b in zip(nats, nbytes)) / (m - 1)
    return math.sqrt(var / m) / mean_b / math.log(2)


def evaluate_bpb(model: GPT, batches, token_bytes: torch.Tensor, device: torch.device, autocast) -> float:
    """Bits per byte: Σ nats over targets with token_bytes > 0, over ln 2 · Σ their bytes."""
    return bits_per_byte(*evaluate_batch_sums(model, batches, token_bytes, device, autocast))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _prepare_out_dir(config: TrainConfig) -> Path | None:
    if config.out_dir is None:
        return None
    out = Path(config.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a directory")
    held = [name for name in (METRICS_FILENAME, CHECKPOINT_FILENAME) if (out / name).exists()]
    if held and config.resume is None and not config.overwrite:
        raise TrainError(f"--out {out} already holds a run ({held[0]}); choose another directory, "
                         "--resume it or pass --overwrite")
    try:
        check_writable_folder(out)
    except WriteError as exc:
        raise TrainError(f"--out: {exc}") from None
    return out


# ---------------------------------------------------------------------------------------------- train
def train(config: TrainConfig) -> TrainResult:
    """Train one model; see the module docstring. Raises TrainError on bad input (nothing written)."""
    t_start = time.perf_counter()
    run = _set_up(config)
    step, diverged, message = _loop(run)
    return _finish(run, step, diverged, message, t_start)


@dataclass
class _Run:
    """What set-up builds for the loop: the inputs, the model and optimizer, and the run's progress (the
    fields from ``start`` on advance as it trains)."""

    config: TrainConfig
    preset: Preset
    rank: int
    world: int
    device: torch.device
    data: Any
    model: GPT
    optimizer: Any
    kinds: list[str]
    schedule: Schedule
    identity: dict
    out_dir: Path | None
    writer: Path | None
    total_steps: int
    eval_every: int
    checkpoint_every: int
    log: Any = None
    start: int = 0
    wall: float = 0.0
    first_step_s: float = 0.0
    resumed_wall: float = 0.0    # the wall time trained before this call (a resumed run's checkpoint)
    val_curve: list = field(default_factory=list)
    train_curve: list = field(default_factory=list)
    gates: list = field(default_factory=list)
    final: dict = field(default_factory=lambda: {"bpb": float("nan"), "se": float("nan"), "tokens": 0,
                                                 "batches": []})


# ---------------------------------------------------------------------------------------------- set-up
def _set_up(config: TrainConfig) -> _Run:
    """Check the inputs, load the data, build the model and optimizer, restore a checkpoint, open the log."""
    preset = _check_config(config)
    rank, world = data_parallel()
    if preset.batch_size % world:
        raise TrainError(f"the {preset.name} preset's batch of {preset.batch_size} rows does not split over "
                         f"{world} processes: use a process count that divides it")
    device = torch.device(config.device)
    ckpt = load_checkpoint(config.resume) if config.resume is not None else None
    total_steps = config.steps or (ckpt["total_steps"] if ckpt else preset.steps)
    if ckpt is not None and total_steps < ckpt["total_steps"]:
        raise TrainError(f"steps={total_steps} would shorten the run of checkpoint {config.resume} "
                         f"({ckpt['total_steps']} steps): a resumed run can only be extended")
    data = load_data(config.data, config.tokenizer, preset.max_corpus_bytes)
    check_size(data, preset.seq_len, config.data or "(python stdlib)")
    model_config = GPTConfig.from_depth(preset.depth, data.vocab_size, preset.seq_len, preset.aspect_ratio,
                                        preset.head_dim)
    spec_json = config.spec.to_json(indent=None) if config.spec is not None else None
    identity = {"model_config": model_config.to_dict(), "optimizer": config.optimizer, "spec": spec_json,
                "seed": config.seed, "total_steps": total_steps, "corpus": data.fingerprint,
                "tokenizer": data.tokenizer, "lr_scale": config.lr_scale}
    if ckpt is not None:  # a longer run is allowed: its schedule is recomputed for the new total from here on
        check_compatible(ckpt, config.resume, {k: v for k, v in identity.items() if k != "total_steps"})
    # rank 0 checks and writes the folder (the others would find its first files there)
    out_dir = _prepare_out_dir(config) if rank == 0 else (Path(config.out_dir) if config.out_dir else None)
    model, optimizer, kinds = _build(config, preset, model_config, device, total_steps)
    run = _Run(config, preset, rank, world, device, data, model, optimizer, kinds,
               Schedule(total_steps, preset.warmup_steps, preset.warmdown_ratio, preset.final_lr_frac,
                        preset.momentum_warmup),
               identity, out_dir, out_dir if rank == 0 else None, total_steps, config.eval_every or preset.eval_every,
               preset.checkpoint_every if config.checkpoint_every is None else config.checkpoint_every)
    if ckpt is not None:
        _restore(run, ckpt)
    _open_log(run, model_config, resumed=ckpt is not None)
    return run


def _build(config: TrainConfig, preset: Preset, model_config: GPTConfig, device: torch.device, total_steps: int):
    """(model, optimizer, the groups' kinds): initialised on the CPU from the seed, so every device and
    optimizer starts equal."""
    torch.manual_seed(config.seed)
    model = GPT(model_config)
    model.to(device)
    matrix_kind = "adamw" if config.optimizer == "adamw" else "muon"
    groups = model.param_groups(preset.embedding_lr, preset.unembedding_lr, preset.matrix_lr, preset.weight_decay,
                                matrix_kind=matrix_kind, adam_matrix_lr=preset.adam_matrix_lr)
    optimizer = build_optimizer(config.optimizer, groups, config.spec, total_steps)
    kinds = _group_kinds(optimizer, groups)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"] * config.lr_scale
        group["initial_weight_decay"] = group["weight_decay"]
    return model, optimizer, kinds


def _restore(run: _Run, ckpt: dict) -> None:
    """The model, optimizer and progress of a checkpoint (already checked compatible)."""
    try:
        run.model.load_state_dict(ckpt["model_state"])
        run.optimizer.load_state_dict(ckpt["optimizer_state"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise TrainError(f"checkpoint {run.config.resume} does not fit this model/optimizer: "
                         f"{one_line_reason(exc)}") from None
    if hasattr(run.optimizer, "total_steps"):  # FusedGate's step-fraction sensor: the (possibly extended) horizon
        run.optimizer.total_steps = run.total_steps
    run.start, run.wall, run.first_step_s = ckpt["step"], ckpt["wall_s"], ckpt["first_step_s"]
    run.resumed_wall = ckpt["wall_s"]
    run.val_curve, run.train_curve, run.gates = ckpt["val_curve"], ckpt["train_curve"], ckpt["gate_trajectory"]


def _open_log(run: _Run, model_config: GPTConfig, resumed: bool) -> None:
    if run.writer is not None:
        run.writer.mkdir(parents=True, exist_ok=True)
    run.log = MetricsLog(run.writer, run.data.fingerprint, resume_step=run.start if resumed else None)
    run.log.write("config", step=run.start, config=run.config.to_dict(), model=model_config.to_dict(),
                  n_params=run.model.num_params(), tokenizer=run.data.tokenizer, train_tokens=len(run.data.train),
                  val_tokens=len(run.data.val), total_steps=run.total_steps, resumed=resumed)


# ---------------------------------------------------------------------------------------------- the loop
def _loop(run: _Run) -> tuple[int, bool, str]:
    """Evaluate, checkpoint and train from ``run.start`` to the stop step; (the last step, diverged, message)."""
    config, preset = run.config, run.preset
    trained = run.model
    if run.world > 1 and config.optimizer != "fusedgate":   # FusedGate (zero2) averages the gradients itself
        trained = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    fwd = torch.compile(trained) if config.compile else trained
    autocast = _autocast(run.device)
    token_bytes = torch.from_numpy(run.data.token_bytes).to(run.device)
    val_sets = val_batches(run.data, preset.batch_size, preset.seq_len, preset.eval_tokens)
    final_sets = val_sets
    if config.final_eval_tokens is not None:
        final_sets = val_batches_spread(run.data, preset.batch_size, preset.seq_len, config.final_eval_tokens)
    stop = run.total_steps if config.stop_at is None else min(config.stop_at, run.total_steps)
    bar = tqdm(total=stop, initial=run.start, disable=not config.progress or run.rank > 0, desc=config.name,
               unit="step", dynamic_ncols=True, file=sys.stderr)
    step, diverged, message = run.start, False, ""
    for step in range(run.start, stop + 1):
        if (step % run.eval_every == 0 or step == stop) and not (run.val_curve and run.val_curve[-1]["step"] == step):
            _evaluate(run, step, stop, val_sets, final_sets, token_bytes, autocast, bar)
        if step > run.start and (step == stop or (run.checkpoint_every and step % run.checkpoint_every == 0)):
            _checkpoint(run, step)
        if step == stop:
            break
        message = _train_step(run, step, fwd, autocast, bar)
        if message:
            diverged = True
            break
    bar.close()
    return step, diverged, message


def _evaluate(run: _Run, step: int, stop: int, val_sets, final_sets, token_bytes, autocast, bar) -> None:
    """The validation bits per byte at ``step`` (and, at the stop step, the final evaluation)."""
    nats, nbytes = evaluate_batch_sums(run.model, val_sets, token_bytes, run.device, autocast)
    bpb = bits_per_byte(nats, nbytes)
    if step == stop:
        if final_sets is not val_sets:
            nats, nbytes = evaluate_batch_sums(run.model, final_sets, token_bytes, run.device, autocast)
        run.final = {"bpb": bits_per_byte(nats, nbytes), "se": sampling_error(nats, nbytes),
                     "tokens": sum(int(y.numel()) for _, y in final_sets),
                     "batches": [[n, b] for n, b in zip(nats, nbytes)]}
    tokens = step * run.preset.tokens_per_step
    run.val_curve.append({"step": step, "val_bpb": bpb, "wall_s": run.wall, "tokens": tokens})
    run.log.write("val", step=step, val_bpb=bpb, wall_s=run.wall, tokens=tokens)
    bar.set_postfix(val_bpb=f"{bpb:.3f}", refresh=False)


def _checkpoint(run: _Run, step: int) -> None:
    if run.out_dir is None:
        return
    optimizer_state = run.optimizer.state_dict()   # zero2: a collective, every rank gathers the full state
    if run.writer is None:
        return
    save_checkpoint(run.out_dir / CHECKPOINT_FILENAME, {
        **run.identity, "step": step, "model_state": run.model.state_dict(), "optimizer_state": optimizer_state,
        "data_position": {"sampler": "random-windows(seed, step)", "seed": run.config.seed, "step": step},
        "wall_s": run.wall, "first_step_s": run.first_step_s, "val_curve": run.val_curve,
        "train_curve": run.train_curve, "gate_trajectory": run.gates, "config": run.config.to_dict()})


def _train_step(run: _Run, step: int, fwd, autocast, bar) -> str:
    """One training step (timed, logged); the divergence message, or "" when the loss is finite."""
    config, preset, device, optimizer = run.config, run.preset, run.device, run.optimizer
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    x, y = train_batch(run.data, config.seed, step, preset.batch_size, preset.seq_len)
    rows = slice(run.rank * preset.batch_size // run.world, (run.rank + 1) * preset.batch_size // run.world)
    x, y = x[rows].to(device, non_blocking=True), y[rows].to(device, non_blocking=True)
    with autocast():
        loss = fwd(x, y)
    loss_value = _mean_over_ranks(loss.detach(), run.world).item()   # every rank sees the same value
    if not math.isfinite(loss_value):
        return (f"loss became {loss_value} at step {step}; stopped"
                + (f", last good checkpoint kept in {run.out_dir}" if run.out_dir is not None else ""))
    loss.backward()
    lrm = run.schedule.apply(optimizer.param_groups, run.kinds, step)
    if config.optimizer == "adamw":
        optimizer.step()
    else:
        optimizer.step(loss=loss.detach())
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    run.wall += dt
    if step == 0:
        run.first_step_s = dt
    run.train_curve.append({"step": step, "loss": loss_value, "wall_s": run.wall})
    tokens_per_step = preset.tokens_per_step
    run.log.write("train", step=step, loss=loss_value, lr_mult=lrm, step_s=dt, tokens_per_s=tokens_per_step / dt,
                  wall_s=run.wall)
    # an inert, sensor-free spec (nanochat, muon, adamw) has no gate to log
    if (config.optimizer == "fusedgate" and optimizer.reads_sensors
            and (step % config.gate_log_every == 0 or step == run.total_steps - 1)):
        state = optimizer.gate_state()
        run.gates.append({"step": step, "params": state})
        run.log.write("gate", step=step, params=state)
    bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_step / dt:,.0f}", refresh=False)
    bar.update(1)
    return ""


# ---------------------------------------------------------------------------------------------- finish
def _finish(run: _Run, step: int, diverged: bool, message: str, t_start: float) -> TrainResult:
    """The result (and its log record) of the run that stopped at ``step``."""
    final_bpb = run.final["bpb"]
    if not diverged and math.isnan(final_bpb) and run.val_curve:  # resumed after the final evaluation
        final_bpb = run.val_curve[-1]["val_bpb"]
    steps_done = len(run.train_curve)
    wall = run.wall
    timed_steps, timed_wall = (steps_done - 1, wall - run.first_step_s) if steps_done > 1 else (steps_done, wall)
    tokens_per_s = timed_steps * run.preset.tokens_per_step / timed_wall if timed_wall > 0 else 0.0
    finished = not diverged and step == run.total_steps
    result = TrainResult(
        config=run.config, final_val_bpb=float("nan") if diverged else final_bpb, val_curve=run.val_curve,
        train_curve=run.train_curve, tokens_per_s=tokens_per_s, wall_s=wall, diverged=diverged,
        corpus_fingerprint=run.data.fingerprint, gate_trajectory=run.gates, steps_done=steps_done,
        total_s=time.perf_counter() - t_start, resumed_wall_s=run.resumed_wall, n_params=run.model.num_params(),
        tokenizer=run.data.tokenizer, final_val_se=run.final["se"], final_val_tokens=run.final["tokens"],
        final_val_batches=run.final["batches"], device=str(run.device),
        message=message or ("" if finished else f"stopped at step {step} of {run.total_steps}"))
    run.log.write("result", step=step, **result.summary())
    return result

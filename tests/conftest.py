import functools
import multiprocessing
import os
import sysconfig
import tempfile
from pathlib import Path

import pytest
import torch


@functools.cache
def fma_rounds_once() -> bool:
    """Whether the Triton the kernels run on computes ``tl.fma`` with one rounding, as a GPU does. Triton 3.6's
    interpreter rounds twice (x·y, then + z): fma(1 + 2⁻¹², 1 + 2⁻¹², −(1 + 2⁻¹¹)) is 2⁻²⁴ exactly, 0 there."""
    from fusedgate.kernels import _interpret  # first: it picks the interpreter on a machine without CUDA

    if not _interpret.INTERPRET:
        return True
    import triton
    import triton.language as tl

    @triton.jit
    def fma_kernel(x, y, z, out):
        tl.store(out, tl.fma(tl.load(x), tl.load(y), tl.load(z)))

    x, z, out = torch.tensor([1 + 2 ** -12]), torch.tensor([-(1 + 2 ** -11)]), torch.zeros(1)
    fma_kernel[(1,)](x, x, z, out)
    return out.item() == 2 ** -24


def needs_single_rounding_fma():
    """The skip mark of the tests that hold the kernels to torch's CPU ops bit for bit (or within an ulp or 1e-6,
    teacher-forced): they need ``fma_rounds_once``."""
    return pytest.mark.skipif(not fma_rounds_once(), reason="this Triton's interpreter rounds tl.fma twice "
                              "(Triton 3.6), unlike a GPU and newer interpreters")


@pytest.fixture(scope="session", autouse=True)
def _forkserver_imports_torch():
    """The gloo ranks start from a forkserver (``*_worker.START_METHOD``), not by forking this process: a
    process that has run autograd cannot fork one that runs it again (torch refuses, in its CUDA builds). The
    server imports torch, torch._dynamo (torch's optimizers import it on first use) and fusedgate once, so each rank
    starts about as fast as a fork."""
    multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", "fusedgate"])
    yield


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Keep CPU numerics reproducible and leave a core for the rest of the machine."""
    torch.set_num_threads(1)
    yield


def tiny_regression(seed: int = 0):
    """A two-layer tanh MLP on 64 fixed samples of y = sin x₀ + x₁/2: (model, x, y), seeded."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(64, 8, generator=gen)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    return model, x, y


def sliding_mse(model, x, y, t: int) -> torch.Tensor:
    """The MSE on step t's batch: 16 consecutive samples starting at t mod 48."""
    i = t % 48
    return ((model(x[i:i + 16]) - y[i:i + 16]) ** 2).mean()


def record_lrs(base) -> list[float]:
    """Wrap ``base.step`` so that each call first appends group 0's lr (the lr that step runs at) to the
    returned list."""
    lrs: list[float] = []
    step = base.step

    def spy(*a, **k):
        lrs.append(base.param_groups[0]["lr"])
        return step(*a, **k)

    base.step = spy
    return lrs


def resumed_against_uninterrupted(fresh, train, split: int, steps: int, folder: Path):
    """``fresh()`` -> (model, x, y, brain); ``train(model, x, y, brain, range)``. One run trained for ``steps``;
    another for ``split`` steps, its brain saved to a file and its model and base optimizer state copied into a
    third fresh run, which trains on to ``steps``: asserts the parameters equal the uninterrupted run's bit for
    bit and returns (the uninterrupted brain, the brain saved at ``split``, the resumed brain)."""
    model, x, y, brain = fresh()
    train(model, x, y, brain, range(steps))
    model2, x2, y2, saved = fresh()
    train(model2, x2, y2, saved, range(split))
    saved.save(folder / "b.npz")
    model3, x3, y3, resumed = fresh()
    model3.load_state_dict(model2.state_dict())
    resumed.base.load_state_dict(saved.base.state_dict())
    resumed.load(folder / "b.npz")
    train(model3, x3, y3, resumed, range(split, steps))
    for p, q in zip(model.parameters(), model3.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    return brain, saved, resumed


def load_error(brain, folder: Path, key: str, value) -> str:
    """Save ``brain``, set array ``key`` of the file to ``value``, load it back: the BrainError's message,
    checked to be one line."""
    import numpy as np

    from fusedgate.brain import BrainError

    brain.save(folder / "b.npz")
    with np.load(folder / "b.npz") as data:
        arrays = {k: np.array(data[k]) for k in data.files}
    arrays[key] = np.array(value, dtype=arrays[key].dtype)
    np.savez(folder / "bad.npz", **arrays)
    with pytest.raises(BrainError) as info:
        brain.load(folder / "bad.npz")
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture
def host_reads(monkeypatch) -> dict:
    """Counts ``Tensor.cpu`` calls (the brain's host reads) in ``["n"]`` while the test runs."""
    reads = {"n": 0}
    original = torch.Tensor.cpu

    def counted(self, *a, **k):
        reads["n"] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    return reads


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: a tensor-level relative difference that tiny entries cannot blow up."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def resynchronise(params, opt, ref_params, ref) -> None:
    """Teacher forcing: ``opt``'s params, per-param state and global gate state set to the reference twin's."""
    with torch.no_grad():
        for a, b in zip(params, ref_params):
            a.copy_(b)
            for key, value in ref.state[b].items():
                opt.state[a][key].copy_(value)
        if ref._global is not None:
            opt._global.copy_(ref._global)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """1 MB of this Python's stdlib source in one file: real text the trainer loads in milliseconds."""
    root = Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(b"".join(p.read_bytes() for p in sorted(root.glob("*.py")))[:1_000_000])
    return str(path)


def _can_create_file_in(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no file can be created in: a ``chmod 555`` folder, or, for root (who writes into those
    anyway), ``/sys``, where nobody can create a regular file. Skips when neither works."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not _can_create_file_in(folder):
            yield folder
        elif os.path.isdir("/sys") and not _can_create_file_in(Path("/sys")):
            yield Path("/sys")
        else:
            pytest.skip("no read-only folder available to this user")
    finally:
        folder.chmod(0o755)


@pytest.fixture(scope="session")
def finished_test_run(tmp_path_factory) -> Path:
    """The run folder of a finished 3-step baseline run of the ``test`` preset (a real checkpoint)."""
    from fusedgate.cli import main

    out = tmp_path_factory.mktemp("finished-test-run") / "run"
    assert main(["train", "--preset", "test", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    return out


def count_evaluations(db: str) -> int:
    """Finished evaluations in a search archive another process is writing (0 while it cannot be read)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


# ---------------------------------------------------------------------------- multi-process runs (gloo)
def worst(a: dict, b: dict) -> float:
    """The largest ``max_rel_diff`` over two dicts of tensors with the same keys."""
    assert a.keys() == b.keys()
    return max(max_rel_diff(a[name], b[name]) for name in a)


def assert_ranks_identical(per_rank: list[dict], key: str) -> None:
    for rank, result in enumerate(per_rank[1:], start=1):
        for name, value in result[key].items():
            assert torch.equal(value, per_rank[0][key][name]), f"{key}: rank {rank} differs from rank 0 in {name}"


def train_on_slices(model, opt, global_batch, start: int, stop: int, rank: int = 0, world: int = 1,
                    on_step=None, shards: int = 1) -> None:
    """Steps start..stop-1 on rank's slice of each ``global_batch(step)`` (tokens, targets). ``shards`` > 1 (one
    process): the gradient is the sum of the shards' gradients, in shard order, divided by the count, and the
    loss their mean — the arithmetic of an all-reduce over ``shards`` ranks."""
    for step in range(start, stop):
        if on_step is not None:
            on_step(step)
        tokens, targets = global_batch(step)
        share = len(tokens) // world
        tokens, targets = tokens[rank * share:(rank + 1) * share], targets[rank * share:(rank + 1) * share]
        if shards == 1:
            loss = torch.nn.functional.cross_entropy(model(tokens), targets)
            loss.backward()
        else:
            loss = _shard_average(model, tokens, targets, shards)
        opt.step(loss=loss.detach())
        opt.zero_grad(set_to_none=True)


def _shard_average(model, tokens, targets, shards: int) -> torch.Tensor:
    size = len(tokens) // shards
    losses, grads = [], None
    for s in range(shards):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(tokens[s * size:(s + 1) * size]),
                                                 targets[s * size:(s + 1) * size])
        loss.backward()
        losses.append(loss.detach())
        shard = [p.grad for p in model.parameters()]
        grads = shard if grads is None else [a + b for a, b in zip(grads, shard)]
    for p, g in zip(model.parameters(), grads):
        p.grad = g / shards
    return sum(losses[1:], losses[0]) / shards


def run_gloo_rank(rank: int, world: int, store: str, out: str, work) -> None:
    """The body of one gloo rank of a multi-process test: one thread, a file-store process group, ``work()``
    (-> its results), saved as ``out/rank{r}_of_{world}.pt`` for ``join_ranks``; a failure is written to
    ``out/error_rank{r}_of_{world}.txt`` and re-raised."""
    import datetime
    import traceback

    import torch.distributed as dist

    from fusedgate.ranks import exit_rank

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    out = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.save(work(), out / f"rank{rank}_of_{world}.pt")
    except BaseException:
        (out / f"error_rank{rank}_of_{world}.txt").write_text(traceback.format_exc())
        dist.destroy_process_group()
        raise
    exit_rank(0)   # barrier, destroy, os._exit: gloo's teardown abort cannot fail a finished rank


def join_ranks(ctx, world: int, out: Path, timeout_s: float, poll_s: float = 1.0) -> list[dict]:
    """Wait for the processes of ``torch.multiprocessing.start_processes`` (killing them past ``timeout_s``);
    the results they saved as ``out/rank{r}_of_{world}.pt``, by rank."""
    deadline = timeout_s
    try:
        while not ctx.join(timeout=poll_s):
            deadline -= poll_s
            if deadline <= 0:
                raise TimeoutError(f"{world} gloo processes did not finish in {timeout_s} s")
    finally:
        for process in ctx.processes:
            if process.is_alive():
                process.kill()
                process.join()
    return [torch.load(out / f"rank{r}_of_{world}.pt", weights_only=False) for r in range(world)]

"""OptBrain save/load: exact continuation after a restart, state dicts, and clear errors on bad files."""

import copy
import io
import os

import numpy as np
import pytest
import torch

from fusedgate import OptBrain
from fusedgate.brain import BrainError
from fusedgate.brain.state_io import FORMAT_VERSION, snapshot_arrays


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "lr": 2e-3}]
    gen = torch.Generator().manual_seed(7)   # the data does not depend on the init seed
    x = torch.randn(48, 6, generator=gen)
    y = torch.stack([x[:, 0] * x[:, 1], torch.cos(x[:, 2])], dim=1)
    return model, torch.optim.AdamW(groups, lr=5e-3), x, y


def train(model, brain, x, y, start, stop):
    for t in range(start, stop):
        idx = torch.arange(t * 5, t * 5 + 12) % 48
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        brain.zero_grad()
        loss.backward()
        brain.step(loss=loss.detach())


BRAIN = dict(window=4, warmup_windows=1, seed=11)


@pytest.mark.parametrize("freeze", [None, {0: (1.5, 0.4, 0.6), 1: (0.7, 1.0, 0.3)}])
def test_restart_from_npz_continues_exactly(tmp_path, freeze):
    model, base, x, y = make()
    brain = OptBrain(base, **BRAIN)
    if freeze:
        brain.freeze(freeze)
    train(model, brain, x, y, 0, 70)
    reference = [p.detach().clone() for p in model.parameters()]

    model, base, x, y = make()
    brain = OptBrain(base, **BRAIN)
    if freeze:
        brain.freeze(freeze)
    train(model, brain, x, y, 0, 33)              # stop mid-window (33 % 4 == 1)
    brain.save(tmp_path / "brain.npz")
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(base.state_dict())

    model, base, x, y = make(seed=5)              # a fresh process: other init, fresh brain
    model.load_state_dict(saved_model)
    base.load_state_dict(saved_opt)
    brain = OptBrain(base, **BRAIN)
    brain.load(tmp_path / "brain.npz")
    assert brain.step_count == 33 and brain.frozen == bool(freeze)
    train(model, brain, x, y, 33, 70)
    for p, r in zip(model.parameters(), reference):
        assert torch.equal(p.detach(), r)
    if freeze:
        assert brain.state_nbytes(include_buffers=True) > brain.state_nbytes()   # dampen buffers saved


def test_state_dict_round_trip_through_torch_save_weights_only():
    model, base, x, y = make()
    brain = OptBrain(base, **BRAIN)
    train(model, brain, x, y, 0, 21)
    buffer = io.BytesIO()
    torch.save(brain.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    model2, base2, _, _ = make()
    model2.load_state_dict(model.state_dict())
    brain2 = OptBrain(base2, **BRAIN)
    brain2.load_state_dict(loaded)
    a, b = snapshot_arrays(brain), snapshot_arrays(brain2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    train(model, brain, x, y, 21, 40)
    train(model2, brain2, x, y, 21, 40)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_numpy_mode_round_trip(tmp_path):
    def loop(brain, rng, steps):
        out = []
        for _ in range(steps):
            out.append(brain.get_decisions(float(rng.uniform(1, 2))))
            brain.record_grads(0, rng.standard_normal(10), rng.standard_normal(10))
            brain.finish_step()
        return out

    a = OptBrain(None, n_groups=1, window=3, warmup_windows=1)
    loop(a, np.random.default_rng(0), 20)
    a.save(tmp_path / "np.npz")
    b = OptBrain(None, n_groups=1, window=3, warmup_windows=1)
    b.load(tmp_path / "np.npz")
    assert loop(a, np.random.default_rng(1), 30) == loop(b, np.random.default_rng(1), 30)


def test_bad_files_give_one_line_errors_and_change_nothing(tmp_path):
    model, base, x, y = make()
    brain = OptBrain(base, **BRAIN)
    train(model, brain, x, y, 0, 10)
    before = snapshot_arrays(brain)
    good = tmp_path / "good.npz"
    brain.save(good)

    def expect(path, match):
        with pytest.raises(BrainError, match=match) as info:
            brain.load(path)
        assert "\n" not in str(info.value)
        after = snapshot_arrays(brain)
        assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)

    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    expect(tmp_path / "junk.npz", "not a readable OptBrain")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:200])
    expect(tmp_path / "cut.npz", "not a readable OptBrain")
    expect(tmp_path / "missing.npz", "does not exist")
    arrays = dict(np.load(good))
    np.savez(tmp_path / "pickled.npz", **{**arrays, "core.W": np.array([{"evil": 1}], dtype=object)})
    expect(tmp_path / "pickled.npz", "not a readable OptBrain")
    np.savez(tmp_path / "nokey.npz", **{k: v for k, v in arrays.items() if k != "core.b"})
    expect(tmp_path / "nokey.npz", "missing array 'core.b'")
    np.savez(tmp_path / "window.npz", **{**arrays, "window": np.array(8)})
    expect(tmp_path / "window.npz", "window=8 does not match")
    np.savez(tmp_path / "nan.npz", **{**arrays, "core.W": arrays["core.W"] * np.nan})
    expect(tmp_path / "nan.npz", "not finite")
    other = OptBrain(None, n_groups=2, window=4, warmup_windows=1, seed=11)
    other.save(tmp_path / "numpy.npz")
    expect(tmp_path / "numpy.npz", "saved from a numpy brain")
    # a brain for a different model: same group count, other sizes
    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Linear(6, 13), torch.nn.Tanh(), torch.nn.Linear(13, 2))
    OptBrain(torch.optim.SGD([{"params": list(wide[0].parameters())}, {"params": list(wide[2].parameters())}],
                             lr=0.1), **BRAIN).save(tmp_path / "wide.npz")
    expect(tmp_path / "wide.npz", "group sizes")
    with pytest.raises(BrainError, match="does not exist"):
        brain.save(tmp_path / "no" / "such" / "dir.npz")
    good_bytes = good.read_bytes()
    with pytest.raises(BrainError):
        brain.save(tmp_path)                      # a directory: the rename fails, nothing is lost
    assert good.read_bytes() == good_bytes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".optbrain")) == []


def saved_arrays(tmp_path):
    """A trained brain, its .npz and the arrays in it."""
    model, base, x, y = make()
    brain = OptBrain(base, **BRAIN)
    train(model, brain, x, y, 0, 14)
    brain.save(tmp_path / "good.npz")
    return brain, dict(np.load(tmp_path / "good.npz"))


@pytest.mark.parametrize("key, value, match", [
    ("core.mu", np.inf, "'core.mu' is not finite"),
    ("core.rng", 0, r"core.rng is not a PCG64 generator state"),
    ("step_count", -5, r"step_count=-5 is out of range: expected an integer in \[0, 1e\+15\]"),
    ("config.total_steps", -100, r"config.total_steps=-100: expected an integer in \[0, 1000000000000\]"),
    ("core.cycle_pos", 1_000_000, r"core.cycle_pos=1000000 is out of range: expected an integer in \[0, 4\]"),
    ("gate.alpha", 3.0, r"gate.alpha=3.0 is out of range"),
    ("config.explore", -1.0, r"config.explore=-1.0: expected a finite number in \[0, 10\]"),
    ("core.decisions", 50.0, r"core.decisions: scale outside \[0.01, 10\]"),
    ("feat.norm_weight", 2.0, r"the running gradient norms \(feat.norm_\*\) are corrupt"),
    ("feat.norm_count", 0, r"the running gradient norms \(feat.norm_\*\) are corrupt"),
])
def test_a_loaded_state_is_range_checked_like_the_constructor(tmp_path, key, value, match):
    brain, arrays = saved_arrays(tmp_path)
    before = snapshot_arrays(brain)
    bad = dict(arrays)
    bad[key] = np.full_like(arrays[key], value)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(BrainError, match=match) as info:
        brain.load(tmp_path / "bad.npz")
    assert "\n" not in str(info.value) and str(tmp_path / "bad.npz") in str(info.value)
    after = snapshot_arrays(brain)
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)   # nothing changed


def test_a_file_of_another_version_or_other_groups_is_refused_in_one_line(tmp_path):
    brain, arrays = saved_arrays(tmp_path)
    np.savez(tmp_path / "v2.npz", **{**arrays, "format_version": np.array(FORMAT_VERSION - 1)})
    with pytest.raises(BrainError, match=rf"not an OptBrain file of format version {FORMAT_VERSION} "
                                         rf"\(found {FORMAT_VERSION - 1}\)") as info:
        brain.load(tmp_path / "v2.npz")
    assert "\n" not in str(info.value)
    torch.manual_seed(0)
    three = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))
    other = OptBrain(torch.optim.SGD([{"params": [three[0].weight]}, {"params": [three[0].bias]},
                                      {"params": list(three[2].parameters())}], lr=0.1), **BRAIN)
    other.save(tmp_path / "three.npz")
    with pytest.raises(BrainError, match="n_groups=3 does not match this brain's n_groups=2"):
        brain.load(tmp_path / "three.npz")


def test_load_names_what_a_path_is_when_it_is_not_a_file(tmp_path):
    brain, _ = saved_arrays(tmp_path)
    with pytest.raises(BrainError, match="is a directory; expected a regular .npz file"):
        brain.load(tmp_path)
    if os.path.exists("/dev/zero"):
        with pytest.raises(BrainError, match="is a character device; expected a regular .npz file"):
            brain.load("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BrainError, match=r"is a FIFO \(named pipe\)"):   # refused by stat: no open, no hang
        brain.load(fifo)

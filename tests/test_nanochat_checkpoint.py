"""fusedgate.nanochat.checkpoint: a checkpoint that cannot be resumed is refused in one line that keeps torch's
whole reason (not cut at 60 characters, the first shape mismatch named, no torch warning printed before it)."""

import fractions
import pickle
import shutil

import pytest
import torch

from fusedgate.cli import main as cli_main
from fusedgate.nanochat.checkpoint import FORMAT


def resume_error(path, capsys, *extra) -> str:
    """The stderr of ``fusedgate train --resume path``: asserted to be one line and exit code 2."""
    code = cli_main(["train", "--resume", str(path), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "Warning" not in err, err
    return err


def test_a_raw_pickle_is_refused_without_torch_s_warning(tmp_path, capsys):
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"format": FORMAT, "step": 1}, protocol=4))  # torch warns about protocol 4
    err = resume_error(path, capsys)
    assert "not a torch.save zip archive (a raw pickle or another format)" in err
    assert "weights-only loader refused it: Unsupported operand" in err


def test_a_disallowed_object_is_named_in_full(tmp_path, capsys):
    path = tmp_path / "foreign.pt"
    torch.save({"format": FORMAT, "payload": fractions.Fraction(1, 3)}, path)
    err = resume_error(path, capsys)
    assert "Unsupported global: GLOBAL fractions.Fraction was not an allowed global by default.)" in err
    assert "add_safe_globals" not in err and "weights_only` set to `False`" not in err  # not the unsafe advice


def test_a_checkpoint_with_wrong_shapes_names_the_first_mismatch(finished_test_run, tmp_path, capsys):
    ckpt = torch.load(finished_test_run / "checkpoint.pt", weights_only=True)
    name = next(iter(ckpt["model_state"]))
    shape = tuple(ckpt["model_state"][name].shape)
    ckpt["model_state"][name] = torch.zeros(3, 5)
    run = tmp_path / "run"
    shutil.copytree(finished_test_run, run)
    torch.save(ckpt, run / "checkpoint.pt")
    err = resume_error(run, capsys, "--steps", "4")
    assert f"does not fit this model/optimizer: RuntimeError: Error(s) in loading state_dict for GPT: size " \
           f"mismatch for {name}: copying a param with shape torch.Size([3, 5]) from checkpoint, the shape in " \
           f"current model is torch.Size({list(shape)})" in err


@pytest.mark.parametrize("size", [0, 1])
def test_an_empty_or_one_byte_checkpoint_is_one_line(size, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"\x80"[:size])
    assert "is corrupt or not a fusedgate checkpoint" in resume_error(path, capsys)

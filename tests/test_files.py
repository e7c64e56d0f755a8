"""fusedgate.files: the atomic writer, the writable-folder check and markdown tables, on the real file system."""

import os
import stat

import pytest
import torch

from fusedgate.files import WriteError, check_writable_folder, markdown_table, write_atomic


def test_write_atomic_writes_text_bytes_and_streams(tmp_path):
    write_atomic(tmp_path / "a.txt", "héllo\n")
    write_atomic(tmp_path / "b.bin", b"\x00\xff")
    tensor = torch.arange(5.0)
    write_atomic(tmp_path / "c.pt", lambda fh: torch.save({"t": tensor}, fh))
    assert (tmp_path / "a.txt").read_bytes() == "héllo\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["t"], tensor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.pt"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")

    def half_then_fail(fh):
        fh.write(b"new, half written")
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    write_atomic(path, "new")
    assert path.read_text() == "new"


def test_read_only_folder_is_one_clear_error(read_only_folder):
    target = read_only_folder / "out.md"
    with pytest.raises(WriteError) as info:
        write_atomic(target, "x")
    message = str(info.value)
    assert message.startswith(f"cannot write {target}: the folder {read_only_folder} is not writable")
    assert "\n" not in message and "Errno" not in message and not target.exists()
    with pytest.raises(WriteError, match="is not writable"):
        check_writable_folder(read_only_folder / "new" / "run")


def test_check_writable_folder_creates_nothing(tmp_path):
    planned = tmp_path / "a" / "b"
    assert check_writable_folder(planned) == planned and not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("keep")
    with pytest.raises(WriteError, match="is a file"):
        check_writable_folder(tmp_path / "file" / "run")
    with pytest.raises(WriteError, match="not a folder"):
        check_writable_folder(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep"


def test_markdown_table_round_trips_its_cells():
    rows = [["fusedgate", "4.2346", 12, "ok"], ["a|b", "", 3, "stopped at step 5 of 12"]]
    lines = markdown_table(["optimizer", "bpb", "steps", "status"], rows).splitlines()
    assert len(lines) == 4 and set(lines[1]) <= {"|", "-", ":", " "}

    def cells(line):  # split on unescaped pipes
        parts, current, i = [], "", 1
        while i < len(line) - 1:
            if line[i] == "\\" and line[i + 1] == "|":
                current, i = current + "|", i + 2
                continue
            if line[i] == "|":
                parts.append(current.strip())
                current = ""
            else:
                current += line[i]
            i += 1
        return parts + [current.strip()]

    assert cells(lines[0]) == ["optimizer", "bpb", "steps", "status"]
    assert [cells(line) for line in lines[2:]] == [[str(c) for c in row] for row in rows]

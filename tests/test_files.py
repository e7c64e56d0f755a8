"""fusedgate.files: the input-file reader, the atomic writer, the writable-folder check and markdown tables, on the
real file system (real FIFOs, /dev/zero, folders)."""

import os
import stat

import pytest
import torch

from fusedgate.files import (
    ReadError,
    WriteError,
    check_regular_file,
    check_writable_folder,
    markdown_table,
    read_bytes,
    read_text,
    write_atomic,
)


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


# ------------------------------------------------------------------------------------------------ the reader
def test_read_text_and_bytes_of_a_regular_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{"é": 1}', encoding="utf-8")
    assert read_text(path, "spec file", 100) == '{"é": 1}'
    assert read_bytes(path, "spec file", 100) == '{"é": 1}'.encode()
    assert read_bytes(path, "data file", 3, truncate=True) == b'{"\xc3'
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert read_text(link, "spec file", 100) == '{"é": 1}'  # a link to a regular file is that file


@pytest.fixture
def special_files(tmp_path):
    """A real FIFO (nobody writes to it: opening it for reading would block), a link to it, /dev/zero (never
    ends), a folder."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    return [(fifo, "a FIFO (named pipe)"), (link, "a FIFO (named pipe)"), ("/dev/zero", "a character device"),
            (tmp_path, "a folder")]


def test_special_files_are_refused_before_they_are_opened(special_files):
    for path, kind in special_files:
        for read in (lambda p: read_text(p, "spec file", 1000), lambda p: read_bytes(p, "data file", 10, True),
                     lambda p: check_regular_file(p, "checkpoint")):
            with pytest.raises(ReadError) as caught:
                read(path)
            message = str(caught.value)
            assert message.startswith("cannot read ") and f"{path}: it is {kind}, not a regular file" in message


def test_size_cap_encoding_and_missing_file_are_one_line(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (2 << 20))
    with pytest.raises(ReadError, match=r"big.json: it is 2 MiB, over the 1 MiB limit for a spec file$"):
        read_text(big, "spec file", 1 << 20)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"x": "d\xe9j\xe0"}'.encode("latin-1"))
    with pytest.raises(ReadError, match=r"it is not UTF-8 text \(byte 0xe9 at offset 8\)"):
        read_text(latin, "spec file", 100)
    with pytest.raises(ReadError, match="missing.json: it does not exist") as caught:
        read_text(tmp_path / "missing.json", "spec file", 100)
    assert caught.value.reason == "it does not exist" and "\n" not in str(caught.value)

"""Safe writes: a failed, full or killed write leaves the previous file byte-identical; bad outputs fail early."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from llama2_et import files
from llama2_et.files import (
    OutputPathError,
    atomic_write,
    atomic_write_bytes,
    check_output_dir,
    check_output_path,
)

REPO = Path(__file__).resolve().parents[1]
GOOD = os.urandom(50_000)  # the previous file every failed write must leave untouched


def in_private_mount(script: str) -> subprocess.CompletedProcess:
    """Run a shell script in a new user + mount namespace (root there: it may mount a tmpfs)."""
    return subprocess.run(
        ["unshare", "-rm", "sh", "-euc", script], capture_output=True, text=True, timeout=120
    )


def private_mounts_work() -> bool:
    return shutil.which("unshare") is not None and in_private_mount("true").returncode == 0


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "sub" / "model.bin"
    assert atomic_write_bytes(target, GOOD).read_bytes() == GOOD  # missing folders are created
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
    target.chmod(0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin"]


def test_an_exception_mid_write_leaves_the_previous_file(tmp_path):
    target = atomic_write_bytes(tmp_path / "model.bin", GOOD)
    with pytest.raises(KeyError), atomic_write(target) as f:
        f.write(b"half of a new file")
        raise KeyError("the exporter failed")
    assert target.read_bytes() == GOOD
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_a_disk_full_error_leaves_the_previous_file(tmp_path, monkeypatch):
    """ENOSPC surfacing at fsync, as on file systems that allocate late (simulated: works without root)."""
    target = atomic_write_bytes(tmp_path / "model.bin", GOOD)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, os.urandom(80_000))
    assert target.read_bytes() == GOOD
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_a_real_full_tmpfs_leaves_the_previous_file(tmp_path):
    if not private_mounts_work():
        pytest.skip("no user namespaces here to mount a small tmpfs (the simulated ENOSPC test still runs)")
    code = textwrap.dedent("""
        import os, sys
        from pathlib import Path
        from llama2_et.files import atomic_write_bytes
        target = Path(sys.argv[1]) / "model.bin"
        good = os.urandom(100_000)
        atomic_write_bytes(target, good)
        try:
            atomic_write_bytes(target, os.urandom(300_000))
        except OSError as exc:
            print("error", exc.errno)
        print(target.read_bytes() == good, sorted(p.name for p in target.parent.iterdir()))
    """)
    mount = tmp_path / "small"
    mount.mkdir()
    r = in_private_mount(
        f"mount -t tmpfs -o size=256k tmpfs {mount}; cd {REPO}; PYTHONPATH={REPO} "
        f"{sys.executable} -c '{code}' {mount}"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == [f"error {errno.ENOSPC}", "True ['model.bin']"]


def test_kill_9_mid_write_leaves_the_previous_file(tmp_path):
    target = atomic_write_bytes(tmp_path / "model.bin", GOOD)
    writer = textwrap.dedent("""
        import sys, time
        from llama2_et.files import atomic_write
        with atomic_write(sys.argv[1]) as f:
            for _ in range(10_000):  # 640 MB, slowly: the parent kills it part way
                f.write(bytes(65536))
                f.flush()
                time.sleep(0.001)
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", writer, str(target)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") and p.stat().st_size > 1 << 20 for p in tmp_path.iterdir()):
        assert child.poll() is None and time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert target.read_bytes() == GOOD


def test_output_path_checks_fail_before_any_work(tmp_path):
    a_file = atomic_write_bytes(tmp_path / "notes.txt", b"x")
    with pytest.raises(OutputPathError, match=r"notes.txt is a file, not a folder"):
        check_output_path(a_file / "model.pte", ".pte")
    with pytest.raises(OutputPathError, match=r"notes.txt is a file, not a folder"):
        check_output_path(a_file / "deeper" / "model.pte")
    with pytest.raises(OutputPathError, match=r"is a folder; give a file path such as .*out.pte"):
        check_output_path(tmp_path, ".pte")
    with pytest.raises(OutputPathError, match=r"model.bin should end in .pte"):
        check_output_path(tmp_path / "model.bin", ".pte")
    with pytest.raises(OutputPathError, match=r"notes.txt is a file, not a folder; choose another output"):
        check_output_dir(a_file)
    assert check_output_path(tmp_path / "new" / "model.pte", ".pte") == tmp_path / "new" / "model.pte"
    assert check_output_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # checking creates nothing


def test_unwritable_folder_is_found_by_a_probe(tmp_path, monkeypatch):
    """A read-only file system, simulated (works without root); the real one is in the next test."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(
        OutputPathError, match=r"cannot write .*m.pte: .* is not writable \(Read-only file system\)"
    ):
        check_output_path(tmp_path / "m.pte")


def test_a_real_read_only_file_system(tmp_path):
    if not private_mounts_work():
        pytest.skip("no user namespaces here to mount a read-only tmpfs (the simulated test still runs)")
    mount = tmp_path / "ro"
    mount.mkdir()
    code = "from llama2_et.files import check_output_path as c; import sys; c(sys.argv[1])"
    r = in_private_mount(
        f"mount -t tmpfs -o ro tmpfs {mount}; cd {REPO}; PYTHONPATH={REPO} "
        f"{sys.executable} -c '{code}' {mount}/m.pte"
    )
    assert r.returncode == 1 and "OutputPathError" in r.stderr
    assert f"cannot write {mount}/m.pte: {mount} is not writable (Read-only file system)" in r.stderr


def test_a_folder_without_write_permission(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere: drop to an unprivileged user in a user namespace
        prefix = ["unshare", "-U", "--map-user=1000", "--map-group=1000"]
        if shutil.which("unshare") is None or subprocess.run([*prefix, "true"]).returncode:
            pytest.skip("running as root without user namespaces: every folder is writable")
    code = "from llama2_et.files import check_output_path as c; import sys; c(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [*prefix, sys.executable, "-c", code, str(folder / "m.pte")], capture_output=True, text=True, env=env
    )
    assert r.returncode == 1
    assert f"cannot write {folder}/m.pte: {folder} is not writable (Permission denied)" in r.stderr

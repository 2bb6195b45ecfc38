"""The harness's folders in shared places refuse what another local user could have planted,
and its files there are opened without following links (issue 23, part 3)."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness import devices, safe_paths
from harness.ranks import logs

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

OTHER_UID = 4242


def _made_by_someone_else(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, hand `path` to another uid; as a user, pretend to be another one."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, -1)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)


@pytest.fixture
def temp_root(monkeypatch, tmp_path):
    """A private temp dir standing in for the shared /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(devices.LEASE_DIR_ENV, raising=False)
    return tmp_path


def test_the_lease_and_rank_log_folders_are_created_private(temp_root):
    for path in (devices.lease_dir(), logs.logs_root()):
        assert path.parent == temp_root and stat.S_IMODE(path.stat().st_mode) == 0o700, path


@pytest.mark.parametrize("make", [devices.lease_dir, logs.logs_root], ids=["leases", "rank-logs"])
def test_a_folder_another_user_created_first_is_refused(temp_root, monkeypatch, make):
    planted = make()
    planted.chmod(0o777)
    with pytest.raises(safe_paths.UnsafePathError, match="others can write in it"):
        make()
    planted.chmod(0o700)
    _made_by_someone_else(planted, monkeypatch)
    with pytest.raises(safe_paths.UnsafePathError, match=r"is owned by uid \d+, not by this user"):
        make()


def test_a_folder_that_is_a_link_or_a_file_is_refused(temp_root, monkeypatch):
    target = temp_root / "elsewhere"
    target.mkdir(mode=0o700)
    link = temp_root / "linked"
    link.symlink_to(target)
    with pytest.raises(safe_paths.UnsafePathError, match="is a symbolic link"):
        safe_paths.secure_dir(link)
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(temp_root / "a-file"))
    (temp_root / "a-file").write_text("")
    with pytest.raises(safe_paths.UnsafePathError, match="exists and is not a directory"):
        devices.lease_dir()


def test_a_folder_others_may_only_read_is_narrowed_as_pytest_does(temp_root):
    folder = temp_root / "readable"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    safe_paths.secure_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_lease_folder_is_shared_with_a_group_only_by_setgid_choice(temp_root, monkeypatch):
    shared = temp_root / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    with pytest.raises(safe_paths.UnsafePathError, match="setgid 2770"):
        safe_paths.secure_dir(shared, allow_group=True)
    shared.chmod(0o2770)
    assert safe_paths.secure_dir(shared, allow_group=True) == shared
    with pytest.raises(safe_paths.UnsafePathError):
        safe_paths.secure_dir(shared)  # the rank logs are never group-shared
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(shared))
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "1")
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    with devices.lease(1, "t"):
        assert stat.S_IMODE((shared / "gpu-fake0.lock").stat().st_mode) == 0o660


def test_a_planted_lock_link_is_not_followed(temp_root, monkeypatch):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "1")
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    chosen = temp_root / "chosen-by-attacker"
    (devices.lease_dir() / "gpu-fake0.lock").symlink_to(chosen)
    with pytest.raises(OSError), devices.lease(1, "t", timeout=0.1):
        pass
    assert not chosen.exists()


def test_a_lease_log_planted_as_a_link_is_not_followed_and_the_lease_is_released(temp_root, monkeypatch):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "1")
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    victim = temp_root / "victim"
    victim.write_text("precious\n")
    log = temp_root / "lease.log"
    log.symlink_to(victim)
    monkeypatch.setenv(devices.LEASE_LOG_ENV, str(log))
    with pytest.raises(OSError), devices.lease(1, "t", timeout=0.1):
        pass
    assert victim.read_text() == "precious\n"
    monkeypatch.delenv(devices.LEASE_LOG_ENV)
    with devices.lease(1, "t", timeout=0.1) as held:  # the failed log left no lock behind
        assert held == ["fake0"]


def test_a_lock_file_others_could_read_is_made_private_so_no_one_else_can_pin_it(temp_root, monkeypatch):
    """flock works through a read-only descriptor: a readable lock file is a lease anyone can hold."""
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "1")
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    lock = devices.lease_dir() / "gpu-fake0.lock"
    lock.touch(mode=0o644)
    lock.chmod(0o644)  # as an older harness left it
    with devices.lease(1, "t"):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    if os.geteuid() != 0:
        return
    # Another user, allowed into the folder, still cannot open the lock to pin it.
    devices.lease_dir().chmod(0o711)
    pin = f"import fcntl, os; os.setuid({OTHER_UID}); fcntl.flock(os.open({str(lock)!r}, os.O_RDONLY), fcntl.LOCK_EX)"
    run = subprocess.run([sys.executable, "-c", pin], capture_output=True, text=True, check=False)
    assert run.returncode != 0 and "PermissionError" in run.stderr, run.stderr
    fd = safe_paths.open_lock(lock)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_log_files_are_made_new_and_emptied_without_following_links(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "rank0.log"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        safe_paths.truncate(link)
    with pytest.raises(FileExistsError):
        safe_paths.open_new(link)
    assert victim.read_text() == "precious"
    os.close(safe_paths.open_new(tmp_path / "rank1.log"))
    assert stat.S_IMODE((tmp_path / "rank1.log").stat().st_mode) == 0o600


def test_an_atomic_write_replaces_the_whole_file_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "durations.json"
    target.write_text("old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        safe_paths.write_atomically(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["durations.json"]
    monkeypatch.undo()
    safe_paths.write_atomically(target, "new")
    assert target.read_text() == "new"

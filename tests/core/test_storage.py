"""rayft_core.storage on the local filesystem (the s3:// side runs against moto in tests/cluster/test_storage_ray.py)."""

import errno

from rayft_core import storage


def test_paths_and_uris_are_told_apart_and_a_uri_is_staged_locally(tmp_path):
    assert storage.is_uri("s3://b/runs") and not storage.is_uri(str(tmp_path))
    assert storage.local_run_dir(str(tmp_path / "run")) == tmp_path / "run"
    a, b = storage.local_run_dir("s3://one/runs/x"), storage.local_run_dir("s3://two/runs/x")
    assert a != b and a.name.startswith("x-")  # two buckets, one run name: two staging directories


def test_read_write_and_listing(tmp_path):
    run = str(tmp_path / "runs" / "a")
    assert storage.read_text(storage.join(run, "f.txt")) is None and not storage.exists(run)
    storage.write_text(storage.join(run, "f.txt"), "hello")  # creates the directories it needs
    assert storage.read_text(storage.join(run, "f.txt")) == "hello" and storage.exists(run)


def test_check_writable_says_why_and_leaves_no_probe(tmp_path):
    assert storage.check_writable(str(tmp_path / "new")) is None
    assert list((tmp_path / "new").iterdir()) == []
    (tmp_path / "file").write_text("x")
    assert storage.check_writable(str(tmp_path / "file" / "runs")) is not None


def test_os_errors_are_explained():
    assert "no space left on the device while writing the checkpoint" in storage.explain_os_error(
        OSError(errno.ENOSPC, "No space left on device"), "the checkpoint"
    )
    assert "no space left" in storage.explain_os_error(OSError("IOError: [errno 28] No space left on device"), "x")
    assert "no permission to write x" in storage.explain_os_error(OSError(errno.EROFS, "Read-only file system"), "x")

"""A run's directory in output.storage_path: a local or shared path, or a URI that pyarrow reaches
(s3://, gs://, abfs://, ...). One set of functions for both, so no caller branches on the kind.

Rank 0 writes its files (model, metrics, summary, trackers) into a local directory (``local_run_dir``):
the run's directory itself when it is a path, a staging copy when it is a URI, uploaded by ``publish``.
Ray Train writes the checkpoints to storage_path itself.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from rayft_core.errors import UserInputError

CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's folders in the run directory; they are not staged or published


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str, *names: str) -> str:
    return "/".join([str(location).rstrip("/"), *names])


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``location`` and the path on it (a relative local path made absolute)."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().absolute())
    if str(location).startswith("hf://"):  # the Hugging Face hub, through huggingface_hub's fsspec filesystem
        return pafs.PyFileSystem(_HubHandler(os.environ.get("HF_ENDPOINT"))), str(location)[len("hf://") :]
    try:
        return pafs.FileSystem.from_uri(str(location))
    except (ValueError, OSError) as e:
        raise UserInputError(f"cannot open {location!r}: {e}") from None


def hub_filesystem(endpoint: str | None = None) -> Any:
    """huggingface_hub's filesystem (hf://datasets/owner/name@revision/path), at ``endpoint``, else at HF_ENDPOINT
    as this process sees it now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import HfFileSystem

    return HfFileSystem(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None)


class _HubHandler(pafs.FSSpecHandler):
    """pyarrow's view of the hub filesystem, which keeps its endpoint when pickled to a Ray task (HfFileSystem
    itself comes back at the default endpoint in another process)."""

    def __init__(self, endpoint: str | None):
        self.endpoint = endpoint
        super().__init__(hub_filesystem(endpoint))

    def __reduce__(self) -> tuple:
        return _HubHandler, (self.endpoint,)


def local_run_dir(location: str) -> Path:
    """Where rank 0 writes the run's files before they reach ``location``: the directory itself, or for a
    URI a staging directory on this node named after it."""
    if not is_uri(location):
        return Path(location)
    digest = hashlib.sha1(location.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / "rayft-runs" / f"{location.rstrip('/').rsplit('/', 1)[-1]}-{digest}"


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(location: str) -> str | None:
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(location: str, text: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def check_writable(location: str) -> str | None:
    """Why nothing can be written at ``location`` (a probe file is created and removed), or None."""
    probe = join(location, f".rayft-write-test-{uuid.uuid4().hex[:8]}")
    try:
        write_text(probe, "ok")
        fs, path = filesystem(probe)
        fs.delete_file(path)
    except (OSError, UserInputError) as e:
        return str(e)
    return None


def publish(local: Path, location: str) -> None:
    """Upload the staged files of a run to its URI (nothing to do when the run directory is a path)."""
    if not is_uri(location):
        return
    fs, path = filesystem(location)
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        target = f"{path}/{file.relative_to(local).as_posix()}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(file), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def fetch(location: str, local: Path) -> None:
    """Download a run's files (not its checkpoints) into the staging directory: a resumed run continues
    the metrics and trackers of the attempts before it, whichever node they ran on."""
    if not is_uri(location):
        return
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        relative = info.path[len(path) :].lstrip("/")
        if info.type != pafs.FileType.File or relative.startswith(CHECKPOINT_PREFIX) or relative.startswith("."):
            continue
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(info.path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def explain_os_error(e: OSError, what: str) -> str:
    """An OSError of writing ``what`` as one line a user can act on."""
    if e.errno == errno.ENOSPC or "No space left" in str(e):  # pyarrow's errors carry the text, not always errno
        return f"no space left on the device while writing {what}; free space or move output.storage_path"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write {what} ({e.strerror}); choose a writable output.storage_path"
    return f"writing {what} failed: {e}"

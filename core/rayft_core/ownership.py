"""The one deletion rule: rayft deletes only what it can prove it wrote.

Every command that writes into a directory (train, tune, `data prepare`, `export`, the data cache) goes
through ``claim`` first. A destination is

- absent or empty: used as it is;
- a directory rayft wrote (a marker of its kind is there) holding only entries rayft writes there: refused
  unless overwrite is asked for, and then those entries are deleted, never the directory itself;
- anything else (a file, a directory without the marker, or one with an entry rayft does not write):
  refused whatever overwrite says, naming what is in the way.

So overwrite replaces an earlier rayft output and nothing else: a user's files are never deleted, and a
typo'd path (`.`, `..`, a home directory, a base model's folder) is refused because it holds files that are
not rayft's. Files that another reader could see half-written are written to a temporary sibling and
renamed into place (``staged_dir``, ``write_file_atomically``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from rayft_core import storage
from rayft_core.errors import UserInputError

# What save_pretrained writes for a model, an adapter and a tokenizer (PEFT adds a model card README.md).
_HF_FILES = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_config.json",
    "adapter_model.*",
    "README.md",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.*",
    "merges.txt",
    "*.tiktoken",
    "spiece.model",
    "sentencepiece*.model",
    "value_head.safetensors",
)


@dataclass(frozen=True)
class OutputKind:
    what: str  # how messages name it, with its article
    markers: tuple[str, ...]  # any one proves rayft wrote the directory; the first is the one rayft writes first
    entries: tuple[str, ...]  # glob patterns of every top-level entry rayft writes there (markers aside)
    children: tuple[tuple[str, OutputKind], ...] = ()  # entries that are outputs of their own kind, checked as such

    def knows(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in (*self.markers, *self.entries)) or self.child(name) is not None

    def child(self, name: str) -> OutputKind | None:
        return next((kind for pattern, kind in self.children if fnmatch.fnmatchcase(name, pattern)), None)


# `rayft export`: a standalone model and the record of what it was exported from.
EXPORT = OutputKind("an export", ("rayft_export.json",), (*_HF_FILES, "Modelfile"))
# A training run: the run config first; the model, records and trackers from rank 0; Ray Train's checkpoints
# and its own bookkeeping (the snapshot it resumes from, a storage probe); storage_path's write probe.
RUN = OutputKind(
    "a run",
    ("rayft_run.yaml",),
    (
        *_HF_FILES,
        "metrics.jsonl",
        "events.jsonl",
        "summary.json",
        "loss.png",
        "checkpoint_*",
        "checkpoint_manager_snapshot.json",
        ".validate_storage_marker",
        "tensorboard",
        "mlruns",
        "wandb",
        ".rayft-write-test-*",
    ),
    children=(("merged", EXPORT),),
)
# A sweep: sweep.yaml first; the trials' runs, the shared data cache, the results; Ray Tune's experiment state.
SWEEP = OutputKind(
    "a sweep",
    ("sweep.yaml",),
    (
        "trials",
        "data-cache",
        "results.csv",
        "best_run.yaml",
        "metric_vs_params.png",
        "tuner.pkl",
        "trainable.pkl",
        "experiment_state-*.json",
        "basic-variant-state-*.json",
        "search_gen_state-*.json",
        "searcher-state-*.pkl",
        "callback-states-*.pkl",
        "run_trial_*",
        "_run_trial_*",  # the same, in sweeps written before the trial function moved to rayft.tune_trial
        ".validate_storage_marker",
        ".rayft-write-test-*",
    ),
)
# Tokenized data (`rayft data prepare`, the data cache): the marker first, the manifest last (a folder without
# the manifest is unfinished and never read).
PREPARED = OutputKind("prepared data", (".rayft-prepared", "_rayft_data.json"), ("*.parquet",))
# `rayft demo`: its data, tokenizer and base model, and its two runs.
DEMO = OutputKind(
    "a demo",
    ("rayft_demo.txt",),
    ("data", "base", ".rayft-write-test-*"),
    children=(("pretrained", RUN), ("sft-lora", RUN)),
)


class OutputError(UserInputError):
    """A destination rayft will not write into; the message names it and what to do."""


def _listing(location: str) -> list[str] | None:
    """The names in the directory ``location``; None when nothing is there. A file there is an error."""
    fs, path = storage.filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        return None
    if kind != pafs.FileType.Directory:
        raise OutputError(f"{location} is a file, not a directory; choose a directory for the output")
    return sorted(i.path.rstrip("/").rsplit("/", 1)[-1] for i in fs.get_file_info(pafs.FileSelector(path)))


def is_owned(location: str, kind: OutputKind) -> bool:
    """Whether ``location`` is a directory that holds a marker of ``kind``."""
    names = _listing(location) or []
    return any(m in names for m in kind.markers)


def foreign_entries(location: str, kind: OutputKind) -> list[str]:
    """The entries under ``location`` that rayft does not write for ``kind`` (inside its child outputs too)."""
    names = _listing(location) or []
    foreign = [n for n in names if not kind.knows(n)]
    for name in names:
        child = kind.child(name)
        if child is not None:
            inside = storage.join(location, name)
            if (_listing(inside) or []) and not is_owned(inside, child):
                foreign.append(name)
            else:
                foreign += [f"{name}/{n}" for n in foreign_entries(inside, child)]
    return foreign


def problem(location: str, kind: OutputKind, overwrite: bool, flag: str) -> str | None:
    """Why rayft would not write ``kind`` into ``location`` (None: it may). ``flag`` is how the user asks for
    overwrite (``output.overwrite=true``, ``--overwrite``); nothing is changed here."""
    names = _listing(location)
    if not names:
        return None
    foreign = foreign_entries(location, kind)
    if not any(m in names for m in kind.markers) or foreign:
        shown = (
            ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            if foreign
            else ", ".join(names[:5])
        )
        return (
            f"{location} is not empty and holds files rayft did not write there ({shown}); rayft writes only into "
            f"a new or empty directory, or replaces {kind.what} of its own with {flag}, and never deletes "
            "other files: choose another destination, or move those files away"
        )
    if not overwrite:
        return f"{location} already holds {kind.what} written by rayft; choose another destination, or replace it with {flag}"
    return None


def check(location: str, kind: OutputKind, overwrite: bool, flag: str) -> None:
    """``problem`` as an OutputError: for a command that checks its destination before any work."""
    why = problem(location, kind, overwrite, flag)
    if why:
        raise OutputError(why)


def claim(location: str, kind: OutputKind, overwrite: bool, flag: str) -> None:
    """Make ``location`` ready for a new ``kind``: refused as ``problem`` says, else an earlier rayft output
    of that kind there is cleared (with overwrite) and the directory exists."""
    check(location, kind, overwrite, flag)
    clear(location, kind)
    fs, path = storage.filesystem(location)
    fs.create_dir(path, recursive=True)


def clear(location: str, kind: OutputKind, keep: tuple[str, ...] = ()) -> None:
    """Delete the entries of ``location`` that rayft writes for ``kind``, except those named in ``keep``; nothing
    else is touched. The first marker goes last, so an interrupted clear is still recognised as rayft's; other
    markers (a manifest that says the folder is finished) go first."""
    names = _listing(location) or []
    if not any(m in names for m in kind.markers):
        return
    fs, path = storage.filesystem(location)
    doomed = [n for n in names if kind.knows(n) and n not in keep]
    for name in [n for n in doomed if kind.child(n) is not None]:  # a child output holds only what rayft wrote
        inside = storage.join(location, name)
        if (_listing(inside) or []) and (
            not is_owned(inside, kind.child(name)) or foreign_entries(inside, kind.child(name))
        ):
            doomed.remove(name)
    for name in sorted(doomed, key=lambda n: (n == kind.markers[0]) - (n in kind.markers[1:])):
        target = f"{path.rstrip('/')}/{name}"
        if fs.get_file_info(target).type == pafs.FileType.Directory:
            fs.delete_dir(target)
        else:
            fs.delete_file(target)


@contextlib.contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """A temporary sibling of ``dest`` to write into; on success its entries are renamed into ``dest`` (the
    whole directory at once when ``dest`` does not exist yet), on failure it is removed. Nobody ever sees a
    half-written ``dest``. The caller has ``claim``-ed ``dest`` (it is absent, empty or cleared)."""
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.rayft-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if not dest.exists():
            tmp.rename(dest)
        else:  # an empty directory (perhaps the working directory): move the entries in, markers last
            for entry in sorted(tmp.iterdir(), key=lambda p: p.name in _ALL_MARKERS):
                entry.rename(dest / entry.name)
            tmp.rmdir()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # our own temporary directory, uniquely named


_ALL_MARKERS = {m for k in (RUN, SWEEP, PREPARED, EXPORT, DEMO) for m in k.markers}


def check_new_file(
    path: str | Path, overwrite: bool, flag: str = "--overwrite", inputs: tuple[str | Path, ...] = ()
) -> None:
    """A single output file: never one of the command's ``inputs``, never a directory, and an existing file
    only with ``flag``."""
    path = Path(path)
    for source in inputs:
        if Path(source).exists() and path.exists() and path.resolve() == Path(source).resolve():
            raise OutputError(f"{path} is this command's input; write the output to another file")
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name for the output")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; choose another file, or replace it with {flag}")


@contextlib.contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` on success, removed on failure: a reader
    sees the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.rayft-tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_file_atomically(path: str | Path, text: str) -> None:
    with staged_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")

"""Hub datasets as files: ``hf_hub_url`` (owner/name, or owner/name@revision), ``subset`` and ``split`` name some
of a dataset repository's data files, which are then read like files anywhere else: as hf:// URLs through
huggingface_hub's filesystem, a range of bytes at a time, never downloaded whole first. A streamed run resumes
inside such a file at the byte its chunk starts, as it does on local disk or in a bucket.

Which files (the hub's own rules, in the part rayft follows):

1. the dataset card's ``configs:`` (the YAML header of README.md, where a repository names its subsets and their
   splits' files): the config named by ``subset`` (else the one marked ``default: true``, or named "default", or
   the only one), and its ``data_files`` for ``split`` (glob patterns; a plain pattern or list is the train split);
2. otherwise the file-name conventions: data files (json, jsonl, csv, parquet, txt) under the folder named
   ``subset`` when one is given, those whose path names the split (a word in SPLIT_WORDS between ``/ - _ .`` or
   digits, as in ``data/train-00000-of-00004.parquet`` or ``test.jsonl``); when no file names any split, every
   data file is the train split.

The repository's commit is resolved once (``pin``): every worker, and a resumed run, read the same bytes.
Private and gated datasets use the token huggingface_hub finds (HF_TOKEN); HF_ENDPOINT names a mirror.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Any

import yaml

from rayft.sources import READ_EXTENSIONS
from rayft_core import storage
from rayft_core.config import DatasetSpec, RunConfig
from rayft_core.data.registry import DatasetError, resolve_spec

SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_COMMIT = re.compile(r"[0-9a-f]{40}")


def pin(hf_hub_url: str, key: str) -> str:
    """owner/name[@revision] -> owner/name@<its commit>: the bytes a run reads do not move under it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    _check_reachable(hf_hub_url, key)
    repo, _, revision = hf_hub_url.partition("@")
    if _COMMIT.fullmatch(revision):
        return hf_hub_url
    try:
        sha = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).dataset_info(repo, revision=revision or None).sha
    except RevisionNotFoundError:
        raise DatasetError(f"{key}: the hub dataset {repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise DatasetError(
            f"{key}: no dataset {repo!r} on the hub (or it is private or gated: set HF_TOKEN to a token that may "
            "read it)"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise DatasetError(f"{key}: cannot read the hub dataset {repo}: {e}") from None
    return f"{repo}@{sha}"


def hub_files(spec: DatasetSpec, key: str) -> list[str]:
    """The hf:// URLs of a hub dataset's files for its subset and split, at one commit, in order."""
    at = pin(spec.hf_hub_url, key)
    root = f"datasets/{at}"
    fs = storage.hub_filesystem()
    try:
        names = sorted(p.split(f"{at}/", 1)[1] for p in fs.find(root))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{key}: cannot list the hub dataset {at}: {e}") from None
    chosen = _card_files(fs, root, names, spec, key)
    if chosen is None:
        chosen = _by_convention(_data_files(names), spec, key)
    if not chosen:
        raise DatasetError(f"{key}: the hub dataset {at} has no {', '.join(READ_EXTENSIONS)} files for this split")
    return [f"hf://{root}/{n}" for n in chosen]


def _check_reachable(hf_hub_url: str, key: str) -> None:
    from rayft_core.model.loader import hub_reachable

    if not hub_reachable("HF_DATASETS_OFFLINE"):
        raise DatasetError(
            f"{key}: hf://{hf_hub_url} is on the Hugging Face hub, which cannot be reached from here (offline, or "
            "HF_HUB_OFFLINE set); download its files where there is network and name them with `path:`"
        )


def _data_files(names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(READ_EXTENSIONS) and not any(p.startswith((".", "_")) for p in n.split("/"))]


def _card_files(fs: Any, root: str, names: list[str], spec: DatasetSpec, key: str) -> list[str] | None:
    """The files the dataset card's ``configs:`` give the subset and split; None when the card has none."""
    if "README.md" not in names:
        return None
    header = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", fs.read_text(f"{root}/README.md"), re.S)
    try:
        meta = yaml.safe_load(header[1]) if header else None
    except yaml.YAMLError:
        return None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs) or not configs:
        return None
    by_name = {c.get("config_name", "default"): c for c in configs}
    if spec.subset:
        if spec.subset not in by_name:
            raise DatasetError(
                f"{key}: the hub dataset has no subset {spec.subset!r}; its subsets: {', '.join(by_name)}"
            )
        config = by_name[spec.subset]
    else:
        marked = [c for c in configs if c.get("default")]
        config = marked[0] if marked else by_name.get("default") or (configs[0] if len(configs) == 1 else None)
        if config is None:
            raise DatasetError(f"{key}: the hub dataset has several subsets; set subset to one of {', '.join(by_name)}")
    files = config.get("data_files")
    if files is None:  # a config by folder: the conventions inside it
        folder = str(config.get("data_dir", "")).strip("/")
        inside = [n for n in _data_files(names) if not folder or n.startswith(folder + "/")]
        return _by_convention(inside, spec.model_copy(update={"subset": None}), key)
    splits = (
        {f["split"]: f["path"] for f in files if isinstance(f, dict)}
        if isinstance(files, list) and files and isinstance(files[0], dict)
        else {"train": files}
    )
    if spec.split not in splits:
        raise DatasetError(f"{key}: the hub dataset has no split {spec.split!r} here; its splits: {', '.join(splits)}")
    patterns = [splits[spec.split]] if isinstance(splits[spec.split], str) else list(splits[spec.split])
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _by_convention(data: list[str], spec: DatasetSpec, key: str) -> list[str]:
    """The data files whose path names the split (under the subset's folder), or all of them for train when no
    file names a split."""
    if spec.subset:
        folder = spec.subset.strip("/") + "/"
        data = [n[len(folder) :] for n in data if n.startswith(folder)]
        if not data:
            raise DatasetError(f"{key}: the hub dataset has no folder {spec.subset!r} of data files (subset)")
    words = {**SPLIT_WORDS, **({} if spec.split in SPLIT_WORDS else {spec.split: (spec.split,)})}
    named = {split: [n for n in data if _names_one_of(n, w)] for split, w in words.items()}
    if not any(named.values()):
        chosen = data if spec.split == "train" else []
    else:
        chosen = named[spec.split]
    prefix = spec.subset.strip("/") + "/" if spec.subset else ""
    return [prefix + n for n in chosen]


def _names_one_of(path: str, words: tuple[str, ...]) -> bool:
    sep = r"[/\-_. 0-9]"
    return re.search(rf"(?:^|{sep})(?:{'|'.join(map(re.escape, words))})(?:{sep}|$)", path) is not None


def pin_hub_datasets(run: RunConfig) -> RunConfig:
    """The run with every hub dataset of data.train named at its commit now (a dataset_info.json name replaced by
    the entry it stands for): the run a streamed run's workers get, so they all read the same files."""
    train = []
    for i, given in enumerate(run.data.train):
        key = f"data.train[{i}]"
        spec = resolve_spec(given, run.data.dataset_dir, key)
        train.append(spec.model_copy(update={"hf_hub_url": pin(spec.hf_hub_url, key)}) if spec.hf_hub_url else given)
    return run.model_copy(update={"data": run.data.model_copy(update={"train": train})})

"""LLaMA-Factory's data description spec: `dataset: name` entries resolve through dataset_info.json.

    data:
      dataset_dir: data              # holds dataset_info.json
      train: [{dataset: alpaca_en_demo}, {dataset: glaive_toolcall_en_demo}]

An entry's keys (file_name, hf_hub_url, cloud_file_name, formatting, ranking, columns, tags, subset,
split, num_samples) become the fields of a ``DatasetSpec``, so one code path reads both kinds of run.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rayft_core.config import DatasetSpec
from rayft_core.errors import UserInputError
from rayft_core.stage_base import CONVERSATION, PAIR, PROMPT, TAGGED, TEXT, StageSection

INFO_FILE = "dataset_info.json"
_IGNORED_ENTRY_KEYS = {"ms_hub_url", "om_hub_url"}  # used only when hf_hub_url or a file is absent (below)


class DatasetError(UserInputError):
    """A dataset of the run cannot be found or read; the message names its config path."""


def load_dataset_info(dataset_dir: str, key: str) -> dict[str, Any]:
    path = Path(dataset_dir) / INFO_FILE
    if not path.is_file():
        raise DatasetError(
            f"{key}: datasets named by `dataset:` are looked up in {path}, which does not exist; "
            "set data.dataset_dir to the folder holding dataset_info.json, or name files with `path:`"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a file saved with a BOM reads too
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: must be an object mapping dataset names to their descriptions")
    return info


def resolve_spec(spec: DatasetSpec, dataset_dir: str, key: str) -> DatasetSpec:
    """A `dataset:` entry -> the DatasetSpec its dataset_info.json entry describes; others unchanged.

    The run's own keys on the entry (num_samples) win over dataset_info's. A .txt file without a
    format is text, whichever way it was named.
    """
    if spec.dataset:
        spec = _from_dataset_info(spec, dataset_dir, key)
    if spec.format is None and spec.path and spec.path.endswith(".txt"):
        spec = spec.model_copy(update={"format": "text"})
    return spec


def _entry_source(entry: Any, dataset_dir: str, where: str) -> dict[str, Any]:
    """A dataset_info.json entry checked for the types used before the schema sees it, and where its data is."""
    if not isinstance(entry, dict):  # e.g. "alpaca": "alpaca.json", a list, or null
        raise DatasetError(
            f"{where}: must be an object describing the dataset, such as "
            f'{{"file_name": "data.json", "formatting": "alpaca"}}; got {json.dumps(entry)[:60]}'
        )
    for name in ("file_name", "cloud_file_name", "hf_hub_url", "formatting", "folder"):
        if name in entry and not isinstance(entry[name], str):  # used as text below, before the schema sees it
            raise DatasetError(f"{where}: {name} must be a string, got {json.dumps(entry[name])[:60]}")
    for name in ("columns", "tags"):
        if name in entry and not isinstance(entry[name], dict):
            raise DatasetError(f"{where}: {name} must be an object, got {json.dumps(entry[name])[:60]}")
    fields: dict[str, Any] = {}
    if entry.get("hf_hub_url"):
        fields["hf_hub_url"] = entry["hf_hub_url"]
    elif entry.get("cloud_file_name"):
        fields["path"] = entry["cloud_file_name"]
    elif entry.get("file_name"):
        name = entry["file_name"]
        fields["path"] = name if "://" in name else str(Path(dataset_dir) / name)
    elif entry.get("ms_hub_url") or entry.get("om_hub_url") or entry.get("script_url"):
        raise DatasetError(
            f"{where}: only ModelScope/Modelers hubs or a loading script are given; rayft reads files, "
            "cloud paths and the Hugging Face hub (file_name, cloud_file_name, hf_hub_url)"
        )
    else:
        raise DatasetError(f"{where}: needs file_name, cloud_file_name or hf_hub_url")
    return fields


def _from_dataset_info(spec: DatasetSpec, dataset_dir: str, key: str) -> DatasetSpec:
    info = load_dataset_info(dataset_dir, key)
    if spec.dataset not in info:
        close = difflib.get_close_matches(spec.dataset, list(info), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"{len(info)} datasets are described there"
        raise DatasetError(f"{key}.dataset: {spec.dataset!r} is not in {Path(dataset_dir) / INFO_FILE} ({hint})")
    entry = info[spec.dataset]
    where = f"{Path(dataset_dir) / INFO_FILE} entry {spec.dataset!r}"
    fields = _entry_source(entry, dataset_dir, where)
    if entry.get("formatting"):
        fields["format"] = entry["formatting"]
    for name in ("ranking", "columns", "tags", "subset", "split", "num_samples"):
        if name in entry:
            fields[name] = entry[name]
    if "folder" in entry:  # a sub-folder of a hub repository
        fields["hf_hub_url"] = f"{fields.get('hf_hub_url', '')}/{entry['folder']}"
    known = {
        "file_name",
        "hf_hub_url",
        "cloud_file_name",
        "formatting",
        "ranking",
        "columns",
        "tags",
        "subset",
        "split",
        "num_samples",
        "folder",
        "script_url",
    } | _IGNORED_ENTRY_KEYS
    unknown = sorted(set(entry) - known)
    if unknown:
        raise DatasetError(f"{where}: unknown keys {unknown}")
    if "images" in fields.get("columns", {}) or {"videos", "audios"} & set(fields.get("columns", {})):
        raise DatasetError(f"{where}: multimodal datasets (images/videos/audios) are not supported by rayft yet")
    if spec.num_samples:
        fields["num_samples"] = spec.num_samples
    try:
        return DatasetSpec.model_validate(fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise DatasetError(f"{where}: {problems}") from None


def check_stage_fit(spec: DatasetSpec, stage: StageSection, key: str) -> None:
    """A dataset's shape must match the stage's data shape (LLaMA-Factory's rule, checked before reading)."""
    name = stage.name
    if stage.data == TEXT and spec.format in ("sharegpt", "openai"):
        raise DatasetError(f"{key}: stage {name} trains on text; {spec.label} is {spec.format} conversations")
    if stage.data != TEXT and spec.format == "text":
        raise DatasetError(
            f"{key}: stage {name} needs conversations (alpaca, sharegpt or openai); {spec.label} is text"
        )
    if spec.format in ("text", "tokenized"):
        return
    if stage.data == PAIR and not spec.ranking:
        raise DatasetError(
            f"{key}: stage {name} trains on preference pairs; {spec.label} is not a ranking dataset "
            "(ranking: true with chosen and rejected columns)"
        )
    if stage.data != PAIR and spec.ranking:
        raise DatasetError(
            f"{key}: {spec.label} is a ranking (preference) dataset; stage {name} cannot use it: "
            "it trains on " + _SHAPE_NAMES[stage.data]
        )
    if stage.data == TAGGED and spec.columns.kto_tag is None:
        raise DatasetError(f"{key}: stage {name} needs a boolean tag per row; set columns.kto_tag for {spec.label}")


_SHAPE_NAMES = {
    TEXT: "text",
    CONVERSATION: "conversations",
    TAGGED: "answers tagged desirable or not (kto_tag)",
    PROMPT: "prompts",
}

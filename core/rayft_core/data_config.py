"""The data section of a run config: the datasets (LLaMA-Factory's data spec: files, dataset_info.json names,
hub datasets, prepared folders) and how they are read, mixed, cut and packed. Part of the run schema
(rayft_core.config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayft_core.schema import Section


class DatasetColumns(Section):
    """Which column of a dataset holds what (LLaMA-Factory's `columns`); absent columns are simply empty."""

    prompt: str | None = Field(
        None, description="alpaca: the instruction (default 'instruction'); text: the text (default 'text')."
    )
    query: str = Field("input", description="alpaca: extra input appended to the instruction.")
    response: str = Field("output", description="alpaca: the answer (a list of two answers for ranking rows).")
    history: str = Field("history", description="alpaca: earlier [query, response] pairs.")
    messages: str = Field("conversations", description="sharegpt/openai: the list of turns.")
    system: str = Field("system", description="The system prompt.")
    tools: str = Field("tools", description="Tool (function) descriptions, a JSON list or its string.")
    chosen: str = Field("chosen", description="Preference rows: the preferred answer.")
    rejected: str = Field("rejected", description="Preference rows: the dispreferred answer.")
    kto_tag: str | None = Field(
        None, description="KTO rows: the boolean column saying whether the answer is desirable."
    )


class DatasetTags(Section):
    """How sharegpt turns name their speaker (LLaMA-Factory's `tags`). openai format defaults to role/content."""

    role_tag: str | None = Field(None, description="Key of a turn's speaker: 'from' (sharegpt) or 'role' (openai).")
    content_tag: str | None = Field(None, description="Key of a turn's text: 'value' (sharegpt) or 'content' (openai).")
    user_tag: str | None = Field(None, description="Speaker value of user turns: 'human' or 'user'.")
    assistant_tag: str | None = Field(None, description="Speaker value of assistant turns: 'gpt' or 'assistant'.")
    observation_tag: str | None = Field(None, description="Speaker value of tool results: 'observation' or 'tool'.")
    function_tag: str | None = Field(None, description="Speaker value of tool calls: 'function_call'.")
    system_tag: str | None = Field(None, description="Speaker value of a system turn: 'system'.")


class DatasetSpec(Section):
    """One dataset: a name from dataset_info.json, or files named directly, or a hub dataset."""

    dataset: str | None = Field(
        None, description="A dataset name from data.dataset_dir/dataset_info.json (LLaMA-Factory's spec)."
    )
    path: str | None = Field(
        None,
        description="A file, directory or glob of json/jsonl/parquet/csv/txt, local or a URL that pyarrow/fsspec "
        "reads (s3://, gs://, ...); or a directory written by `rayft data prepare`.",
    )
    hf_hub_url: str | None = Field(
        None,
        description="A Hugging Face hub dataset id, owner/name, or owner/name@revision (a branch, tag or commit); "
        "its files for subset and split are read like any URL's (needs network).",
    )
    format: Literal["alpaca", "sharegpt", "openai", "text", "tokenized"] | None = Field(
        None,
        description="alpaca: instruction/input/output(/system/history); sharegpt: turns of from/value; openai: "
        "messages of role/content; text: raw text; tokenized: input_ids/labels from `rayft data prepare`. "
        "Default: text for .txt files, tokenized for prepared directories, else alpaca.",
    )
    ranking: bool = Field(False, description="Preference rows (chosen and rejected answers), for rm/dpo/orpo/simpo.")
    columns: DatasetColumns = Field(default_factory=DatasetColumns)
    tags: DatasetTags = Field(default_factory=DatasetTags)
    subset: str | None = Field(None, description="Hub datasets: the configuration (subset) name.")
    split: str = Field("train", description="Hub datasets: the split.")
    num_samples: int | None = Field(None, ge=1, description="Use at most this many rows of this dataset.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("dataset", "path", "hf_hub_url") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of dataset (a dataset_info.json name), path or hf_hub_url, got {given or 'none'}"
            )
        return self

    @property
    def label(self) -> str:
        """How messages name this dataset."""
        return self.dataset or self.path or f"hf://{self.hf_hub_url.split('@')[0]}"  # pinned or not: one name


class DataConfig(Section):
    train: list[DatasetSpec] = Field(
        min_length=1, description="Training datasets, concatenated or interleaved (see mix)."
    )
    eval: list[DatasetSpec] = Field(default_factory=list, description="Evaluation datasets (instead of val_size).")
    dataset_dir: str = Field(
        "data", description="Folder of dataset_info.json; `dataset:` names and their files resolve here."
    )
    val_size: float = Field(
        0, ge=0, description="Hold out this share (< 1) or number (>= 1) of training examples for evaluation."
    )
    max_seq_len: int = Field(
        1024,
        ge=8,
        description="Tokens per example after the chat template; longer ones are cut "
        "(the response keeps a proportional share).",
    )
    packing: bool | None = Field(
        None,
        description="Pack several examples into each max_seq_len row, attention kept apart "
        "per example. Default: on for stage pt, off otherwise.",
    )
    mix: Literal["concat", "interleave"] = Field("concat", description="How several training datasets combine.")
    mix_probabilities: list[float] | None = Field(
        None, description="interleave: the probability of drawing from each dataset (default: equal)."
    )
    mix_stopping: Literal["first_exhausted", "all_exhausted"] = Field(
        "first_exhausted",
        description="interleave: stop when the first dataset runs out, or when all have (smaller ones are repeated).",
    )
    streaming: bool = Field(
        False,
        description="Stream rows to the workers instead of materializing the tokenized set; needs train.max_steps.",
    )
    max_bad_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of unusable rows tolerated (reported and "
        "skipped); above it the run stops. 0: any bad row stops the run.",
    )
    cache_dir: str | None = Field(
        None,
        description="Keep tokenized data here, keyed by data, tokenizer and template, "
        "so later runs skip tokenizing. Use shared storage on multi-node clusters.",
    )
    shuffle: bool = Field(True, description="Shuffle rows each epoch (seeded).")

    @model_validator(mode="after")
    def _mix(self) -> DataConfig:
        p = self.mix_probabilities
        if p is not None:
            if self.mix != "interleave":
                raise ValueError("mix_probabilities needs mix: interleave")
            if len(p) != len(self.train) or any(x < 0 for x in p) or abs(sum(p) - 1) > 1e-6:
                raise ValueError(
                    f"mix_probabilities needs one non-negative number per train dataset ({len(self.train)}) "
                    f"summing to 1, got {p}"
                )
        return self

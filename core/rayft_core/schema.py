"""The machinery every rayft config schema shares (the run's in rayft_core.config, serving's in
rayft_core.serve_config): strict pydantic sections, YAML files, dotted ``key=value`` overrides, and
validation errors described by their YAML path, the value received and the closest valid key.

    cfg = validate_section(ServeConfig, read_yaml("serve.yaml", "serving config"))

Every config-like file (run, serving, sweep space, LLaMA-Factory YAML) is read by ``read_yaml``: a file
that is missing, not UTF-8, not YAML, not a mapping or has a key twice is a ConfigError naming it.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rayft_core.errors import UserInputError


class ConfigError(UserInputError):
    """A config that cannot be used: one line per problem, each naming its YAML path."""

    def __init__(self, problems: list[str], what: str = "run config"):
        self.problems = problems
        super().__init__(f"invalid {what}:\n" + "\n".join(f"  - {p}" for p in problems))


class Section(BaseModel):
    """A config section: unknown keys are errors, and so are assignments of the wrong type."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


_S = typing.TypeVar("_S", bound=BaseModel)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping with the same key twice: plain PyYAML keeps the last one and silently drops the first."""

    def __init__(self, key: Any, first: int, again: int, mark: Any):
        super().__init__(
            None,
            None,
            f"duplicate key {key!r} on lines {first} and {again} (the second would "
            "replace the first; merge them into one)",
            mark,
        )


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader, except that a key given twice in one mapping raises DuplicateKeyError."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: the keys after it may override its keys
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports an unhashable key itself
            line = key_node.start_mark.line + 1
            if key in lines:
                raise DuplicateKeyError(key, lines[key], line, key_node.start_mark)
            lines[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """yaml.safe_load that refuses duplicate keys; raises yaml.YAMLError (see ``yaml_problem``)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A PyYAML error in one line: what is wrong and where (PyYAML's own message spans several lines)."""
    if isinstance(e, DuplicateKeyError):
        return e.problem
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        what = f"{e.context}, {e.problem}" if e.context else e.problem
        return f"not valid YAML ({what}; line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})"
    if isinstance(e, yaml.reader.ReaderError):  # a control character such as NUL: binary data, not text
        return f"not valid YAML ({str(e).splitlines()[0]} at character {e.position}; is it a text file?)"
    return f"not valid YAML ({' '.join(str(e).split())})"


def read_yaml(path: str | Path, what: str = "run config") -> dict:
    """A config file's top-level mapping. A missing file, bytes that are not UTF-8, bad YAML, a key given
    twice or a top level that is not a mapping is a ConfigError naming the file (``what`` names the kind)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"], what) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read it ({e.strerror})"], what) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{path}: not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}); is it a YAML file? Save it as UTF-8"],
            what,
        ) from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: {yaml_problem(e)}"], what) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}"], what)
    return raw


def apply_override(raw: dict, item: str, union_tags: dict[str, tuple[str, str]] | None = None) -> None:
    """``train.learning_rate=1e-4`` -> raw["train"]["learning_rate"] = 1e-4 (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError([f"override {item!r}: expected key.path=value"])
    key, value = item.split("=", 1)
    try:
        parsed = parse_yaml(value) if value != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(
            [
                f"override {item!r}: its value: {yaml_problem(e)}; to pass it as a string, "
                "put it in quotes (key='\"text\"')"
            ]
        ) from None
    set_key(raw, key.strip(), parsed, f"override {item!r}", union_tags)


def set_key(raw: dict, key: str, value: Any, where: str, union_tags: dict[str, tuple[str, str]] | None = None) -> None:
    """raw["train"]["learning_rate"] = value for key "train.learning_rate"; sections are created as needed.

    ``union_tags``: section -> (its tag key, default tag), for sections written as a bare tag (`stage: sft`),
    which grow into a mapping of that tag (`stage: {name: sft}`) when a key is set inside them."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None or isinstance(child, str):  # a shorthand such as `stage: sft` grows into a mapping
            tags = union_tags or {}
            child = {tags[part][0]: child} if isinstance(child, str) and part in tags else {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError([f"{where}: {part} is not a section"])
        node = child
    node[parts[-1]] = value


def get_key(raw: Any, key: str) -> Any:
    """raw["train"]["learning_rate"] for key "train.learning_rate" (set_key's reverse); None where a part is missing."""
    for part in key.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def validate_section(root: type[_S], raw: Any, what: str = "run config") -> _S:
    """``root.model_validate(raw)`` with every error described by its YAML path (see ``_describe``)."""
    try:
        return root.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([_describe(err, root) for err in e.errors()], what) from None


def _describe(err: dict, root: type[BaseModel]) -> str:
    path, model = _walk(err["loc"], root)
    where = path or "(top level)"
    if err["type"] == "extra_forbidden":
        key = path.rsplit(".", 1)[-1]
        valid = list(model.model_fields) if model else []
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{where}: unknown key ({hint})"
    if err["type"] == "missing":
        return f"{where}: required, missing"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_invalid":
        tags = err["ctx"]["expected_tags"]
        close = difflib.get_close_matches(str(err["ctx"]["tag"]), [t.strip(" '") for t in tags.split(",")], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{where}: unknown {err['ctx']['discriminator'].strip(chr(39))} {err['ctx']['tag']!r}{hint}; choose one of {tags}"
    if err["type"] in ("literal_error", "enum"):
        return f"{where}: {msg}, got {err.get('input')!r}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f", got {got!r}"
    return f"{where}: {msg}{shown}"


def _walk(loc: tuple, root: type[BaseModel]) -> tuple[str, type[BaseModel] | None]:
    """Pydantic's error location -> the YAML path (union tags dropped) and the model owning the last key."""
    node: Any = root  # a model class, the members of a tagged union, or None
    owner = None
    shown: list[str] = []
    for part in loc:
        if isinstance(part, int):  # an index into a list
            if shown:
                shown[-1] += f"[{part}]"
            continue
        if isinstance(node, list):  # this part is the union's tag: continue in the member it names
            node = next((m for m in node if _tag_value(m) == part), None)
            continue
        shown.append(str(part))
        owner = node if isinstance(node, type) else None
        field = owner.model_fields.get(part) if owner else None
        node = models_in(field.annotation) if field else None
    return ".".join(shown), owner


def models_in(annotation: Any) -> Any:
    """The BaseModel inside an annotation: one class, a list of union members, or None."""
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is Annotated:
        return models_in(args[0])
    members = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if typing.get_origin(annotation) is list and members:
        return members[0]
    if len(members) == 1:
        return members[0]
    if members:
        return members
    for a in args:  # list[Model] | None and similar
        found = models_in(a)
        if found is not None:
            return found
    return None


def _tag_value(model: type[BaseModel]) -> str | None:
    """A tagged union member's tag: the value of its one field typed as a single Literal."""
    for f in model.model_fields.values():
        if typing.get_origin(f.annotation) is Literal and len(typing.get_args(f.annotation)) == 1:
            return typing.get_args(f.annotation)[0]
    return None

"""docs/configuration.md, generated from the config schemas: every key of a run config (and of a serving
config) with its type, default and description, one section per config section.

    python -m rayft_core.schema_docs > docs/configuration.md
    python -m rayft_core.schema_docs docs/configuration.md

The source is the JSON schema that `rayft config schema` prints (``RunConfig.model_json_schema()``), walked
generically: a section is any property whose schema is an object, a tagged union of objects (a ``oneOf``
whose variants share a constant property such as ``stage.name`` or ``tuning.method``) gets one table per
variant, and nested objects (``data.train[]``, ``stage.rollout``) get a table of their own. Nothing here
names a config class, so a section, stage or tuning method added to the schema appears here by itself;
descriptions are edited in the schema (``Field(description=...)``), never in the generated file.
Imports only pydantic and the schema modules (no torch, no ray).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault

REGENERATE = ".venv/bin/python -m rayft_core.schema_docs docs/configuration.md"


class _WithFactoryDefaults(GenerateJsonSchema):
    """The JSON schema `rayft config schema` prints, plus the defaults of ``default_factory`` fields (pydantic
    leaves them out), so that a list's ``[]`` or a union's default variant can be shown."""

    def get_default_value(self, schema: Any) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            try:
                return factory()
            except Exception:  # a factory that needs its context: show no default rather than fail
                return NoDefault
        return super().get_default_value(schema)


def json_schema(model: type[BaseModel]) -> dict:
    return model.model_json_schema(schema_generator=_WithFactoryDefaults)


# ----------------------------------------------------------------------------- markdown helpers


def _text(s: str) -> str:
    """A description for a table cell: one line, pipes escaped, and outside code spans no HTML or emphasis."""
    parts = " ".join(str(s).split()).split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = parts[i].replace("\\", "\\\\").replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


def _code(value: Any) -> str:
    """A value as YAML would spell it, in a code span."""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    text = text.replace("|", "\\|")
    return f"``{text}``" if "`" in text else f"`{text}`"


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ----------------------------------------------------------------------------- schema walking


class _Walker:
    def __init__(self, schema: dict, anchor_prefix: str = ""):
        self.schema = schema
        self.defs: dict[str, dict] = schema.get("$defs", {})
        self.prefix = anchor_prefix
        self.def_paths: dict[str, list[str]] = {}  # nested object def -> the key paths that hold it
        self.rendered: set[str] = set()

    # -- resolving

    def ref_name(self, s: dict) -> str | None:
        ref = s.get("$ref", "")
        return ref.rsplit("/", 1)[-1] if ref.startswith("#/$defs/") else None

    def resolve(self, s: dict) -> dict:
        name = self.ref_name(s)
        return self.defs.get(name, {}) if name else s

    def is_object(self, s: dict) -> bool:
        return "properties" in self.resolve(s)

    def alternatives(self, s: dict) -> tuple[list[dict], bool]:
        """The non-null alternatives of a schema and whether null is allowed."""
        alts = s.get("anyOf") or s.get("oneOf")
        if not alts:
            return [s], False
        return [a for a in alts if a.get("type") != "null"], any(a.get("type") == "null" for a in alts)

    def union(self, s: dict) -> tuple[str, list[tuple[Any, dict]]] | None:
        """(tag key, [(tag value, variant schema)]) when ``s`` is a tagged union of objects, else None."""
        alts, _ = self.alternatives(s)
        if len(alts) < 2 or not all(self.is_object(a) for a in alts):
            return None
        variants = [self.resolve(a) for a in alts]
        tag = (s.get("discriminator") or {}).get("propertyName")
        if tag is None:
            common = [
                k for k in variants[0]["properties"] if all("const" in v["properties"].get(k, {}) for v in variants)
            ]
            if not common:
                return None
            tag = common[0]
        if not all("const" in v["properties"].get(tag, {}) for v in variants):
            return None
        return tag, [(v["properties"][tag]["const"], v) for v in variants]

    def nested_object(self, s: dict) -> str | None:
        """The def name of an object held by a property: directly, nullable, or as list items."""
        alts, _ = self.alternatives(s)
        for a in alts:
            if a.get("type") == "array" and isinstance(a.get("items"), dict):
                a = a["items"]
            name = self.ref_name(a)
            if name and self.is_object(a) and self.union(s) is None:
                return name
        return None

    def child_path(self, path: str, key: str, s: dict) -> str:
        """``path.key``, with ``[]`` after a list of objects (whose keys are ``path.key[].k``)."""
        alts, _ = self.alternatives(s)
        is_list = any(a.get("type") == "array" and self.is_object(a.get("items") or {}) for a in alts)
        name = f"{path}.{key}" if path else key
        return name + ("[]" if is_list else "")

    def collect(self, s: dict, path: str, seen: tuple[str, ...] = ()) -> None:
        """Record, in schema order, every key path that holds each nested object def."""
        for variant in [v for _, v in self.union(s)[1]] if self.union(s) else [self.resolve(s)]:
            for key, prop in variant.get("properties", {}).items():
                child = self.child_path(path, key, prop)
                if self.union(prop):
                    self.collect(prop, child, seen)
                    continue
                name = self.nested_object(prop)
                if name and name not in seen:
                    paths = self.def_paths.setdefault(name, [])
                    if child not in paths:
                        paths.append(child)
                    self.collect({"$ref": f"#/$defs/{name}"}, child, seen + (name,))

    def def_anchor(self, name: str) -> str:
        return self.prefix + _anchor(self.def_paths[name][0])

    # -- types and defaults

    def type_of(self, s: dict) -> str:
        alts, nullable = self.alternatives(s)
        parts = [self._one_type(a) for a in alts]
        if nullable:
            parts.append("null")
        return " or ".join(dict.fromkeys(parts))

    def _one_type(self, s: dict) -> str:
        name = self.ref_name(s)
        if name:
            target = self.defs.get(name, {})
            if name in self.def_paths:
                return f"mapping ([keys](#{self.def_anchor(name)}))"
            return self._one_type(target) if target else name
        if "const" in s:
            return _code(s["const"])
        if "enum" in s:
            return " / ".join(_code(v) for v in s["enum"])
        kind = s.get("type")
        if kind == "array":
            items = s.get("items")
            text = f"list of {self.type_of(items)}" if isinstance(items, dict) and items else "list"
        elif kind == "object":
            extra = s.get("additionalProperties")
            text = f"mapping of string to {self.type_of(extra)}" if isinstance(extra, dict) and extra else "mapping"
        elif isinstance(kind, list):
            text = " or ".join(kind)
        else:
            text = kind or "any"
        bounds = [
            f"{op} {json.dumps(s[k])}"
            for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
            if k in s
        ]
        if bounds:
            text += " " + ", ".join(bounds)
        for key, what in (("minItems", "item"), ("minProperties", "key"), ("minLength", "character")):
            if key in s:
                text += f", at least {s[key]} {what}{'s' if s[key] != 1 else ''}"
        if "pattern" in s:
            text += f", matching {_code(s['pattern'])}"
        return text

    def default_of(self, prop: dict, required: bool) -> str:
        if required and "default" not in prop:
            return "**required**"
        if "default" not in prop:
            return ""
        value = prop["default"]
        u = self.union(prop)
        if u and isinstance(value, dict) and u[0] in value:
            return _code(value[u[0]])
        if isinstance(value, dict) and value and self.nested_object(prop):
            return "see its keys"
        if value is None:
            return "`null`"
        return _code(value)

    # -- rendering

    def table(self, obj: dict, path: str, skip: tuple[str, ...] = ()) -> list[str]:
        required = set(obj.get("required", []))
        rows = []
        for key, prop in obj.get("properties", {}).items():
            if key in skip:
                continue
            desc = prop.get("description") or self.resolve(self.alternatives(prop)[0][0]).get("description", "")
            u = self.union(prop)
            type_text = f"one of {len(u[1])} kinds, by {_code(u[0])}" if u else self.type_of(prop)
            rows.append(
                f"| {_code(self.child_path(path, key, prop))} | {type_text} | "
                f"{self.default_of(prop, key in required)} | {_text(desc)} |"
            )
        if not rows:
            return ["No keys besides the ones above."]
        return ["| key | type | default | description |", "|---|---|---|---|", *rows]

    def nested_sections(self, props: dict[str, dict], level: int) -> list[str]:
        """The tables of the nested objects held (at any depth) by ``props``, each once, in schema order."""
        out: list[str] = []
        inside = {"properties": props}
        for name in list(self.def_paths):
            if name in self.rendered or not self._inside(inside, name):
                continue
            self.rendered.add(name)
            target = self.defs[name]
            out += [
                "",
                f'<a id="{self.def_anchor(name)}"></a>',
                "",
                f"{'#' * level} {', '.join(self.def_paths[name])}",
                "",
            ]
            if target.get("description"):
                out += [_text(target["description"]), ""]
            out += self.table(target, self.def_paths[name][0])
        return out

    def _inside(self, s: dict, name: str, seen: frozenset[str] = frozenset()) -> bool:
        u = self.union(s)
        for variant in [v for _, v in u[1]] if u else [self.resolve(s)]:
            for prop in variant.get("properties", {}).values():
                if self.union(prop) and self._inside(prop, name, seen):
                    return True
                inner = self.nested_object(prop)
                if inner == name:
                    return True
                if inner and inner not in seen and self._inside({"$ref": f"#/$defs/{inner}"}, name, seen | {inner}):
                    return True
        return False

    def _section(self, prop: dict) -> bool:
        """A top-level key whose value is one object (possibly null) or a tagged union of objects."""
        if self.union(prop):
            return True
        alts, _ = self.alternatives(prop)
        return len(alts) == 1 and self.ref_name(alts[0]) is not None and self.is_object(alts[0])

    def sections(self, level: int) -> list[str]:
        """The top level: its plain keys in one table, then one section per object-valued key."""
        top = self.schema
        props: dict[str, dict] = top.get("properties", {})
        required = set(top.get("required", []))
        self.collect(top, "")
        for prop in props.values():  # a section's own table is the section; links to it go there
            name = self.nested_object(prop)
            if name and self._section(prop):
                self.rendered.add(name)
        out: list[str] = []
        plain = {k: p for k, p in props.items() if not self._section(p)}
        if plain:
            out += ["", f"{'#' * level} Top-level keys", ""]
            out += self.table({"properties": plain, "required": sorted(required & set(plain))}, "")
            out += self.nested_sections(plain, level)
        for key, prop in props.items():
            if key in plain:
                continue
            out += ["", f'<a id="{self.prefix}{_anchor(key)}"></a>', "", f"{'#' * level} {key}", ""]
            desc = prop.get("description") or self.resolve(self.alternatives(prop)[0][0]).get("description")
            if desc:
                out += [_text(desc), ""]
            u = self.union(prop)
            if u:
                tag, variants = u
                default = self.default_of(prop, key in required)
                links = ", ".join(
                    f"[{_code(value)}](#{self.prefix}{_anchor(f'{key}-{value}')})" for value, _ in variants
                )
                tail = " (required)." if default in ("", "**required**") else f" (default {default})."
                out += [f"Its keys depend on {_code(f'{key}.{tag}')}: {links}{tail}"]
                for value, variant in variants:
                    out += [
                        "",
                        f'<a id="{self.prefix}{_anchor(f"{key}-{value}")}"></a>',
                        "",
                        f"{'#' * (level + 1)} {key}: {value}",
                        "",
                    ]
                    if variant.get("description"):
                        out += [_text(variant["description"]), ""]
                    out += self.table(variant, key, skip=(tag,))
            else:
                alts, nullable = self.alternatives(prop)
                if key in required:
                    out += ["This section is required.", ""]
                elif nullable:
                    out += ["This section is optional (absent, or `null`, by default).", ""]
                out += self.table(self.resolve(alts[0]), key)
            out += self.nested_sections({key: prop}, level + 1)
        return out


# ----------------------------------------------------------------------------- the page


INTRO = """\
# Configuration reference

<!-- GENERATED FILE: do not edit. Regenerate with
     {regenerate}
     from the config schemas; descriptions live in the schema code (Field(description=...)). -->

Every key a config file takes, with its type, default and meaning. This page is generated from the
schemas rayft validates configs with (the run config is what `rayft config schema` prints as JSON
schema), so it always matches the code. Unknown keys are errors, with the closest valid key suggested.

- A **run config** (`rayft train`, `rayft tune`, `rayft submit`, `rayft config validate`, `rayft data`,
  `rayft infer`, `rayft k8s`) is one YAML file with the sections below. On the command line, any key can be
  set as `key.path=value` after the file, the value parsed as YAML (`train.learning_rate=2e-4`,
  `data.train=[{{path: a.json, format: alpaca}}]`).
- A section whose keys depend on a kind (its tag) may be written as the tag alone: `stage: dpo` is
  `stage: {{name: dpo}}`, and a section without its tag takes the default one. `tuning: qlora` is LoRA on a
  4-bit base (`method: lora`, `quantization_bit: 4`).
- A **serving config** (`rayft serve CONFIG`) has its own schema, at the end of this page.

How the options fit together is explained in the topic pages: [data](data.md), [stages](stages.md),
[tuning methods](methods.md), [clusters and jobs](clusters.md), [sweeps](sweeps.md), [serving](serving.md).
"""


def _parts() -> list[tuple[str, str, str, type[BaseModel]]]:
    from rayft_core.config import RunConfig
    from rayft_core.serve_config import ServeConfig

    return [
        ("Run config", "", "The sections of a run config (`rayft train run.yaml`).", RunConfig),
        (
            "Serving config",
            "serve-",
            "The serving config of `rayft serve serve.yaml` (see [serving](serving.md)).",
            ServeConfig,
        ),
    ]


def render() -> str:
    lines = [INTRO.format(regenerate=REGENERATE).rstrip("\n")]
    for title, prefix, intro, model in _parts():
        lines += ["", f"## {title}", "", intro]
        lines += _Walker(json_schema(model), prefix).sections(level=3)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(__doc__.strip())
        return 0 if args and args[0] in ("-h", "--help") else 2
    text = render()
    if args:
        out = Path(args[0])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The schemas a client sees in tools/list, compacted: no per-field titles, no defaults that say what leaving a field
out says (null, empty, false), no descriptions inside nested records, no hints equal to MCP's defaults; the same
arguments validate (tests/test_tool_list.py compares each listed schema with the full one)."""

from __future__ import annotations

from typing import Any

_ANNOTATION_KEYS = {"title"}  # pydantic's per-field titles repeat the field names; nothing reads them
_NUMBER_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "default"}


def compact_schema(schema: Any, drop: set[str]) -> Any:
    """`schema` without the keywords in `drop` (a property that happens to be named like one is kept), and each
    optional field written once: `{"type": ["integer", "null"]}` for pydantic's anyOf-with-null and default null."""
    if isinstance(schema, list):
        return [compact_schema(item, drop) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in drop and not isinstance(value, dict | list):
            continue
        if key == "default" and ("default" in drop or value in (None, [], "") or value is False):  # absent means it
            continue
        if key == "additionalProperties" and value is True:  # JSON Schema's own default
            continue
        if key in ("properties", "$defs", "patternProperties"):
            out[key] = {name: compact_schema(sub, drop) for name, sub in value.items()}
        elif key in _NUMBER_KEYS and isinstance(value, float) and value.is_integer():
            out[key] = int(value)  # 1 and 1.0 are the same JSON Schema number
        else:
            out[key] = compact_schema(value, drop)
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next(option for option in options if option != {"type": "null"})
        if isinstance(other.get("type"), str) and "enum" not in other and "const" not in other:  # null is no enum member
            del out["anyOf"]
            out = {**other, **out, "type": [other["type"], "null"]}
    return _merge_plain_types(out)


def _merge_plain_types(schema: dict[str, Any]) -> dict[str, Any]:
    """anyOf over bare types (and at most one array) as one type list: the same values, written once."""
    options = schema.get("anyOf")
    if not isinstance(options, list) or len(options) < 2:
        return schema
    arrays = [option for option in options if option.get("type") == "array"]
    plain = all(isinstance(option.get("type"), str) and set(option) <= ({"type", "items"} if option in arrays else {"type"})
                for option in options)
    if not plain or len(arrays) > 1 or "type" in schema or "items" in schema:
        return schema
    merged = {key: value for key, value in schema.items() if key != "anyOf"}
    merged["type"] = [option["type"] for option in options]
    if arrays and "items" in arrays[0]:
        merged["items"] = arrays[0]["items"]
    return merged


def _refs(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["$ref"].rsplit("/", 1)[-1]} if isinstance(schema.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_refs(value) for value in schema))
    return set()


def _reachable(names: set[str], defs: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    while names - seen:
        name = (names - seen).pop()
        seen.add(name)
        names |= _refs(defs.get(name, {}))
    return seen


def _ref_counts(schema: Any, counts: dict[str, int]) -> dict[str, int]:
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            name = schema["$ref"].rsplit("/", 1)[-1]
            counts[name] = counts.get(name, 0) + 1
        for value in schema.values():
            _ref_counts(value, counts)
    elif isinstance(schema, list):
        for value in schema:
            _ref_counts(value, counts)
    return counts


def _inline_single_use(schema: dict[str, Any]) -> dict[str, Any]:
    """A definition referenced once is written where it is used (a tagged union's members stay definitions: the
    discriminator's tags name them); `anyOf: [{that record}, null]` becomes one record schema that also allows null."""
    defs = dict(schema.get("$defs", {}))
    tagged = _refs([sub for sub in schema.get("properties", {}).values() if isinstance(sub, dict) and "discriminator" in sub])
    while True:
        counts = _ref_counts({key: value for key, value in schema.items() if key != "$defs"}, {})
        counts = _ref_counts(list(defs.values()), counts)
        once = {name for name, count in counts.items() if count == 1 and name in defs and name not in tagged}
        once -= _refs(list(defs[name] for name in once))  # a nested single-use record moves with its parent later
        if not once:
            break

        def put(sub: Any) -> Any:
            if isinstance(sub, list):
                return [put(item) for item in sub]
            if not isinstance(sub, dict):
                return sub
            if isinstance(sub.get("$ref"), str) and sub["$ref"].rsplit("/", 1)[-1] in once:
                return {**defs[sub["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
            out = {key: put(value) for key, value in sub.items()}
            options = out.get("anyOf")
            if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
                other = next(option for option in options if option != {"type": "null"})
                if other.get("type") == "object" and not {"enum", "const", "anyOf", "oneOf", "allOf"} & set(other):
                    out = {**other, **{k: v for k, v in out.items() if k != "anyOf"}, "type": ["object", "null"]}
            return out

        schema = {key: put(value) for key, value in schema.items() if key != "$defs"}
        defs = {name: put(sub) for name, sub in defs.items() if name not in once}
        schema = {**schema, "$defs": defs} if defs else schema
    return schema


def _undocument_union_members(schema: dict[str, Any]) -> dict[str, Any]:
    """A tagged union's members (sweep's base: generate, edit and inpaint requests) are documented by their own
    tools; here they keep their types and bounds, not the descriptions again, and the fields every member has alike
    are written once, in a shared definition each member includes with allOf."""
    defs = schema.get("$defs", {})
    properties = schema.get("properties", {})
    tagged = {name for name, sub in properties.items() if "discriminator" in sub}
    if not tagged or not defs:
        return schema
    in_unions = _reachable(_refs([properties[name] for name in tagged]), defs)
    elsewhere = _reachable(_refs([sub for name, sub in properties.items() if name not in tagged]), defs)
    quiet = {name: compact_schema(defs[name], {"description"}) for name in in_unions - elsewhere}
    defs = {**defs, **quiet}
    for name in sorted(tagged):
        members = [ref.rsplit("/", 1)[-1] for ref in _refs(properties[name].get("oneOf", [])) if ref.rsplit("/", 1)[-1] in quiet]
        defs = _share_common_fields(defs, sorted(members), f"{name.capitalize()}Common")
    return _name_members_by_tag({**schema, "$defs": defs})


def _name_members_by_tag(schema: dict[str, Any]) -> dict[str, Any]:
    """A tagged union's members are named by their tag (`generate`, not `GenerateBase`), so the discriminator needs no
    mapping: OpenAPI's implicit one (tag = schema name) says the same."""
    defs, properties = dict(schema.get("$defs", {})), dict(schema.get("properties", {}))
    renames: dict[str, str] = {}
    for field, sub in properties.items():
        mapping = sub.get("discriminator", {}).get("mapping") if isinstance(sub, dict) else None
        if not mapping:
            continue
        targets = {tag: ref.rsplit("/", 1)[-1] for tag, ref in mapping.items()}
        if any(tag in defs and tag != name for tag, name in targets.items()):
            continue  # a tag already names another definition: keep the explicit mapping
        renames.update({name: tag for tag, name in targets.items()})
        properties[field] = {**sub, "discriminator": {k: v for k, v in sub["discriminator"].items() if k != "mapping"}}
    if not renames:
        return schema

    def rename(sub: Any) -> Any:
        if isinstance(sub, list):
            return [rename(item) for item in sub]
        if not isinstance(sub, dict):
            return sub
        out = {key: rename(value) for key, value in sub.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref.rsplit("/", 1)[-1] in renames:
            out["$ref"] = f"#/$defs/{renames[ref.rsplit('/', 1)[-1]]}"
        return out

    defs = {renames.get(name, name): rename(sub) for name, sub in defs.items()}
    return {**schema, "properties": rename(properties), "$defs": defs}


def _share_common_fields(defs: dict[str, Any], members: list[str], shared: str) -> dict[str, Any]:
    """Fields alike in every member (same schema, required in all or in none) move to `defs[shared]`; each member
    becomes allOf that plus its own fields, which accepts exactly what it accepted before."""
    if len(members) < 2 or shared in defs:
        return defs
    schemas = [defs[name] for name in members]
    first = schemas[0].get("properties", {})

    def required(sub: dict[str, Any], field: str) -> bool:
        return field in sub.get("required", [])

    common = [
        field for field, sub in first.items()
        if all(other.get("properties", {}).get(field) == sub for other in schemas[1:])
        and len({required(other, field) for other in schemas}) == 1
    ]
    if not common:
        return defs
    def record(properties: dict[str, Any], names: list[str], **extra: Any) -> dict[str, Any]:
        return {**extra, "properties": properties, **({"required": names} if names else {}), "type": "object"}

    out = {**defs, shared: record({field: first[field] for field in common},
                                  [field for field in common if required(schemas[0], field)])}
    for name, sub in zip(members, schemas, strict=True):
        own = {field: value for field, value in sub.get("properties", {}).items() if field not in common}
        out[name] = record(own, [field for field in sub.get("required", []) if field not in common],
                           allOf=[{"$ref": f"#/$defs/{shared}"}])
    return out


def _shallow_output(schema: dict[str, Any]) -> dict[str, Any]:
    """A result's own fields with their types; nested records are objects and a list's or map's members are not
    spelled out (they are described in the tool's text and the input schemas, and every nesting level costs the
    host's context again)."""
    def flatten(sub: Any) -> Any:
        if isinstance(sub, dict):
            if "$ref" in sub:
                return {"type": "object"}
            return {key: flatten(value) for key, value in sub.items() if key not in ("items", "additionalProperties")}
        if isinstance(sub, list):
            return [flatten(value) for value in sub]
        return sub

    # Every field is in every result (results are dumped whole), so `required` tells a host nothing more.
    out = {key: value for key, value in schema.items() if key not in ("$defs", "properties", "required")}
    if "properties" in schema:
        out["properties"] = {name: flatten(sub) for name, sub in schema["properties"].items()}
    return out


# MCP's value for a tool hint that is left out (ToolAnnotations); a hint equal to it tells a host nothing.
# destructiveHint's is true, so a tool that is not destructive says so.
HINT_DEFAULTS = {"read_only_hint": False, "destructive_hint": True, "idempotent_hint": False, "open_world_hint": True}


def compact_annotations(annotations: Any) -> Any:
    """The annotations as listed: the title and every hint that differs from MCP's default."""
    if annotations is None:
        return None
    return annotations.model_copy(update={name: None for name, default in HINT_DEFAULTS.items() if getattr(annotations, name) == default})


def compact_tool_schemas(input_schema: dict[str, Any], output_schema: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The schemas as listed: what costs a host's context and tells nothing is left out (issue: the whole list
    within 8k tokens, held by tests/test_tool_list.py)."""
    output = None
    if output_schema is not None:
        output = compact_schema(_shallow_output(compact_schema(output_schema, {"title", "description", "default"})), set())
    listed = _undocument_union_members(compact_schema(input_schema, _ANNOTATION_KEYS))
    # Nested records refuse unknown keys at validation (a one-line error names them); the schema need not repeat it.
    # A record's description and its fields' are left out: the field that takes it says what a caller must know
    # (its types, bounds and defaults stay).
    defs = {name: {k: v for k, v in compact_schema(sub, {"description"}).items() if k != "additionalProperties"}
            for name, sub in listed.get("$defs", {}).items()}
    return _inline_single_use({**listed, "$defs": defs} if defs else listed), output

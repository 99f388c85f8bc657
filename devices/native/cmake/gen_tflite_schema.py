"""Generate ``src/tflite_schema.inc``: the TF-Lite flatbuffer schema as tables for the runner's verifier.

The ai-edge-litert wheel ships neither ``schema_generated.h`` nor the flatbuffers C++ headers, so the runner carries
its own flatbuffers verifier (``src/flatbuffer_verify.cpp``, the algorithm of ``flatbuffers::Verifier`` and of the
generated ``tflite::VerifyModelBuffer``) driven by a description of every table of the schema. That description is
generated here from the schema the wheel itself was built with: ``ai_edge_litert/schema_py_generated.py``, which
``flatc`` generated from LiteRT's ``schema.fbs`` (so it is the matching version by construction):

- ``<T>Start(builder)``: ``builder.StartObject(n)`` -- table ``T`` with ``n`` fields;
- ``<T>Add<F>(builder, f)``: ``builder.Prepend<Kind>Slot(i, ...)`` -- field ``F`` is in slot ``i`` (vtable offset
  ``4 + 2 i``), a scalar of ``Kind`` or an offset (``UOffsetTRelative``);
- ``<T>Start<F>Vector(builder, n)``: ``builder.StartVector(size, n, align)`` -- ``F`` is a vector of ``size``-byte
  elements;
- the accessor ``T.<F>`` says what an offset field points to: a string, a table, a union, or a vector of scalars,
  strings or tables;
- ``<U>Creator(unionType, table)`` maps each union's type values to its tables; the object API's
  ``<U>Creator(self.<f>Type, <t>.<F>())`` names the union of each union field.

Usage (rerun after upgrading ai-edge-litert; ``tests/test_native_runner.py`` checks the file is current):

    .venv/bin/python devices/native/cmake/gen_tflite_schema.py [schema_py_generated.py] \
        > devices/native/src/tflite_schema.inc
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

SCALAR_SIZES = {"Bool": 1, "Int8": 1, "Uint8": 1, "Int16": 2, "Uint16": 2, "Int32": 4, "Uint32": 4, "Int64": 8,
                "Uint64": 8, "Float32": 4, "Float64": 8}


def wheel_schema() -> Path:
    """The installed ai-edge-litert wheel's ``schema_py_generated.py``."""
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("ai-edge-litert is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "schema_py_generated.py"


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _classes(text: str) -> dict[str, str]:
    """Class name -> its body (up to the next top-level statement)."""
    out = {}
    for m in re.finditer(r"^class (\w+)\(object\):\n((?:(?:    .*)?\n)*)", text, re.M):
        out[m.group(1)] = m.group(2)
    return out


def _methods(body: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^    def (\w+)\(self[^)]*\):\n((?:(?:        .*)?\n)*)", body, re.M):
        out[m.group(1)] = m.group(2)
    return out


def _tables(text: str) -> dict[str, dict]:
    """Every table of the schema with its fields' names, slots and kinds (from the builder functions)."""
    starts = dict(re.findall(r"^def (\w+)Start\(builder\):\n    builder\.StartObject\((\d+)\)", text, re.M))
    tables = {name: {"name": name, "nfields": int(n), "fields": {}} for name, n in starts.items()}
    for t, field, kind, slot in re.findall(
            r"^def (\w+?)Add(\w+)\(builder, \w+\):\n    builder\.Prepend(\w+?)Slot\((\d+),", text, re.M):
        if t not in tables:
            raise SystemExit(f"field {field} of unknown table {t}")
        tables[t]["fields"][field] = {"name": snake(field), "slot": int(slot), "kind": kind}
    return tables


def _union_fields(text: str) -> dict[tuple[str, str], str]:
    """(table, field) -> the union it holds, from the object API."""
    union_of_field = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^class (\w+)T\(object\):", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"(\w+)Creator\(self\.\w+Type, \w+\.(\w+)\(\)\)", line)
        if m and current:
            union_of_field[(current, m.group(2))] = m.group(1)
    return union_of_field


def _unions(text: str, classes: dict[str, str], tables: dict[str, dict]) -> list[dict]:
    """Every union with its members' type values and tables."""
    unions = []
    for m in re.finditer(r"^def (\w+)Creator\(unionType, table\):\n((?:(?:    .*)?\n)*)", text, re.M):
        name = m.group(1)
        values = {k: int(v) for k, v in re.findall(r"^    (\w+) = (\d+)$", classes[name], re.M)}
        members = {}
        for member, target in re.findall(rf"if unionType == {name}\.(\w+):\n\s+return (\w+)T\.InitFromBuf",
                                         m.group(2)):
            if target not in tables:
                raise SystemExit(f"union {name} member {member}: unknown table {target}")
            members[values[member]] = target
        unions.append({"name": name, "members": members})
    return unions


def _vector_kind(where: str, body: str, obj: re.Match | None, size: int | None) -> dict:
    if size is None:
        raise SystemExit(f"{where}: vector without a Start...Vector")
    if obj and "self._tab.Indirect(" in body:
        return {"type": "vector_of_tables", "ref": obj.group(1), "size": size}
    if obj:
        raise SystemExit(f"{where}: a vector of structs (not in the TF-Lite schema)")
    if "self._tab.String(" in body:
        return {"type": "vector_of_strings", "size": size}
    if "self._tab.Get(" in body:
        return {"type": "vector", "size": size}
    raise SystemExit(f"{where}: unknown vector kind")


def _field_kind(t: dict, fname: str, f: dict, body: str, ctx: dict) -> dict:
    """What the verifier checks for one field, read from its accessor's ``body``."""
    where = f"{t['name']}.{fname}"
    if f"self._tab.Offset({4 + 2 * f['slot']})" not in body:
        raise SystemExit(f"{where}: accessor does not read slot {f['slot']}")
    if f["kind"] != "UOffsetTRelative":
        if f["kind"] not in SCALAR_SIZES:
            raise SystemExit(f"{where}: unknown scalar kind {f['kind']}")
        return {"type": "scalar", "size": SCALAR_SIZES[f["kind"]]}
    obj = re.search(r"obj = (\w+)\(\)", body)
    if "self._tab.Union(" in body:
        union = ctx["union_of_field"].get((t["name"], fname))
        if union not in ctx["union_names"]:
            raise SystemExit(f"{where}: union field of unknown union {union}")
        type_field = t["fields"].get(fname + "Type")
        if type_field is None:
            raise SystemExit(f"{where}: union without a type field")
        return {"type": "union", "ref": union, "type_slot": type_field["slot"]}
    if "self._tab.Vector(o)" in body:
        return _vector_kind(where, body, obj, ctx["vectors"].get((t["name"], fname)))
    if "self._tab.String(o + self._tab.Pos)" in body:
        return {"type": "string"}
    if obj and "self._tab.Indirect(o + self._tab.Pos)" in body:
        return {"type": "table", "ref": obj.group(1)}
    raise SystemExit(f"{where}: unknown field kind")


def parse(text: str) -> tuple[list[dict], list[dict], str]:
    """(tables, unions, file identifier) of the schema in ``schema_py_generated.py``'s ``text``."""
    classes = _classes(text)
    tables = _tables(text)
    unions = _unions(text, classes, tables)
    ctx = {
        "union_of_field": _union_fields(text),
        "union_names": {u["name"] for u in unions},
        "vectors": {(t, f): int(size) for t, f, size in re.findall(
            r"^def (\w+?)Start(\w+)Vector\(builder, numElems\):\n    return builder\.StartVector\((\d+),", text,
            re.M)},
    }
    for t in tables.values():
        methods = _methods(classes.get(t["name"], ""))
        for fname, f in t["fields"].items():
            f.update(_field_kind(t, fname, f, methods.get(fname, ""), ctx))
            if f.get("ref") and f["type"] in ("table", "vector_of_tables") and f["ref"] not in tables:
                raise SystemExit(f"{t['name']}.{fname}: unknown table {f['ref']}")
    ident = re.search(r"def ModelBufferHasIdentifier.*\n.*BufferHasIdentifier\(buf, offset, b\"([^\"]+)\"", text)
    if not ident or "Model" not in tables:
        raise SystemExit("no Model table with a file identifier")
    identifier = bytes(int(h, 16) for h in re.findall(r"\\x([0-9A-Fa-f]{2})", ident.group(1))).decode()
    return list(tables.values()), unions, identifier


KIND = {"scalar": "kScalar", "string": "kString", "table": "kTable", "union": "kUnion", "vector": "kVector",
        "vector_of_strings": "kVectorOfStrings", "vector_of_tables": "kVectorOfTables"}


def generate(schema_py: Path) -> str:
    """The C++ text of ``tflite_schema.inc`` for the schema in ``schema_py``."""
    tables, unions, identifier = parse(Path(schema_py).read_text())
    tables.sort(key=lambda t: t["name"])
    index = {t["name"]: i for i, t in enumerate(tables)}
    uindex = {u["name"]: i for i, u in enumerate(unions)}
    out = [
        "// Generated by devices/native/cmake/gen_tflite_schema.py from the ai-edge-litert wheel's",
        "// schema_py_generated.py (the TF-Lite schema LiteRT was built with); do not edit. Included by",
        "// src/tflite_verify.cpp: each table's fields for the flatbuffer verifier.",
        f"// {len(tables)} tables, {len(unions)} unions; file identifier \"{identifier}\".",
        "",
        f"constexpr const char* kTfliteIdentifier = \"{identifier}\";",
        f"constexpr int kTfliteRootTable = {index['Model']};",
        "",
    ]
    for t in tables:
        fields = sorted(t["fields"].values(), key=lambda f: f["slot"])
        rows = []
        for f in fields:
            ref = index[f["ref"]] if f["type"] in ("table", "vector_of_tables") else (
                uindex[f["ref"]] if f["type"] == "union" else -1)
            rows.append(f"    {{\"{f['name']}\", {4 + 2 * f['slot']}, {KIND[f['type']]}, {f.get('size', 0)}, {ref}, "
                        f"{4 + 2 * f['type_slot'] if f['type'] == 'union' else 0}}},")
        if rows:
            out.append(f"constexpr FieldDesc kFields_{t['name']}[] = {{")
            out += rows
            out.append("};")
    out.append("constexpr TableDesc kTables[] = {")
    for t in tables:
        n = len(t["fields"])
        out.append(f"    {{\"{t['name']}\", {('kFields_' + t['name']) if n else 'nullptr'}, {n}}},")
    out.append("};")
    for u in unions:
        top = max(u["members"]) if u["members"] else 0
        members = ", ".join(str(index[u["members"][v]]) if v in u["members"] else "-1" for v in range(top + 1))
        out.append(f"constexpr int16_t kUnion_{u['name']}[] = {{{members}}};")
    out.append("constexpr UnionDesc kUnions[] = {")
    for u in unions:
        out.append(f"    {{\"{u['name']}\", kUnion_{u['name']}, {max(u['members']) + 1 if u['members'] else 0}}},")
    out.append("};")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else wheel_schema()))

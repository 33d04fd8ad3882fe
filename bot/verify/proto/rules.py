"""Base descriptors against head descriptors, element by element, by the wire-compatibility rules.

The classification follows `buf breaking`'s WIRE and WIRE_JSON categories (buf.build/docs/breaking/rules):
each change gets a category, `wire` (breaks callers built from the base `.proto` on the binary wire),
`json` (binary-safe, breaks only the JSON mapping: names and JSON types) or `none` (reported, safe). The
caller decides whether `json` counts as breaking (`wire_json=True`, buf's WIRE_JSON).

Where loopgate is stricter than buf's WIRE, it says so at the rule:
- a field renumbered, or a field's name reused at another number (buf sees a deletion plus an addition,
  and passes it when the old number is reserved), is breaking: every old caller's value lands in the
  wrong field or is dropped, which is the defect a service's own unit tests cannot see;
- a removed service or RPC is breaking (buf files RPC_NO_DELETE / SERVICE_NO_DELETE under FILE and
  PACKAGE, as generated-code breaks): for a running service it means UNIMPLEMENTED for every old caller.
Removed messages, enums and packages are reported but not breaking on their own, as in WIRE: whatever
still sends them is caught by the field and RPC rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from bot.verify.proto import limits
from bot.verify.proto.index import Enum, Field, Message, Method, Schema, Service

Category = Literal["wire", "json", "none"]
_Add = Callable[[str, str, str | None, str | None, Category], None]  # kind, pointer, base, head, category

# protobuf.dev "Updating a message type" / buf's FIELD_WIRE_COMPATIBLE_TYPE: int32, uint32, int64,
# uint64 and bool share the varint encoding; sint32/sint64 share zigzag; fixed32/sfixed32 and
# fixed64/sfixed64 share their fixed widths. string → bytes is allowed (bytes → string is not: nothing
# proves the bytes are UTF-8); message ↔ bytes and enum ↔ integer are not, as buf has it.
_WIRE_GROUP: Final = {
    "int32": "varint", "int64": "varint", "uint32": "varint", "uint64": "varint", "bool": "varint",
    "sint32": "zigzag", "sint64": "zigzag", "fixed32": "fixed32", "sfixed32": "fixed32",
    "fixed64": "fixed64", "sfixed64": "fixed64",
}  # fmt: skip
# buf's FIELD_WIRE_JSON_COMPATIBLE_TYPE: the JSON mapping splits the varints (64-bit integers are JSON
# strings, bool is true/false) and keeps string and bytes (base64) apart.
_JSON_GROUP: Final = {
    "int32": "int32", "uint32": "int32", "int64": "int64", "uint64": "int64",
    "fixed32": "fixed32", "sfixed32": "fixed32", "fixed64": "fixed64", "sfixed64": "fixed64",
}  # fmt: skip
# buf's FIELD_WIRE_COMPATIBLE_CARDINALITY: implicit and explicit presence share a group; required stands
# alone; repeated and map share the wire (a map is a repeated entry message) but not JSON.
_CARD_WIRE: Final = {"singular": 1, "optional": 1, "required": 2, "repeated": 3, "map": 3}
_CARD_JSON: Final = {"singular": 1, "optional": 1, "required": 2, "repeated": 3, "map": 4}


@dataclass(frozen=True)
class Change:
    file: str  # the descriptor file (virtual name) it belongs to: head's when the element remains
    kind: str
    pointer: str
    baseline: str | None
    sandbox: str | None
    category: Category


class Changes:
    """The collected changes, at most MAX_FINDINGS; `dropped` counts the rest."""

    def __init__(self, cap: int = limits.MAX_FINDINGS) -> None:
        self.items: list[Change] = []
        self.dropped = 0
        self.cap = cap

    def add(
        self, file: str, kind: str, pointer: str, base: str | None, head: str | None, category: Category
    ) -> None:
        if len(self.items) >= self.cap:
            self.dropped += 1
            return
        self.items.append(Change(file, kind, _clip(pointer), _maybe(base), _maybe(head), category))


def compare(base: Schema, head: Schema, base_files: set[str], head_files: set[str]) -> Changes:
    """Every base element defined in `base_files` against its head twin (found by full name in any head
    file: moving a type between files does not change the wire); head additions from `head_files`."""
    rules = _Rules(base, head)
    for name in sorted(base.files.keys() & base_files):
        twin = head.files.get(name)
        if twin is not None and twin != base.files[name]:
            # FILE_SAME_PACKAGE (WIRE): every type's full name, so every RPC path, moves.
            was, now = base.files[name] or "(none)", twin or "(none)"
            rules.out.add(name, "proto_package_changed", "", was, now, "wire")
    head_packages = {head.files[f] for f in head.files}
    gone = sorted({base.files[f] for f in base_files if f in base.files} - head_packages)
    for package in gone:  # PACKAGE_NO_DELETE is PACKAGE-only: its elements are judged one by one
        first = min(f for f in base_files if base.files.get(f) == package)
        rules.out.add(first, "proto_package_removed", "", package or "(none)", None, "none")
    for full, message in sorted(base.messages.items()):
        if message.file in base_files:
            rules.message(message, head.messages.get(full))
    for full, enum in sorted(base.enums.items()):
        if enum.file in base_files:
            rules.enum(enum, head.enums.get(full))
    for full, service in sorted(base.services.items()):
        if service.file in base_files:
            rules.service(service, head.services.get(full))
    for full, service in sorted(head.services.items()):
        if service.file in head_files and full not in base.services:
            methods = f"service, {len(service.methods)} method{'s' if len(service.methods) != 1 else ''}"
            rules.out.add(service.file, "proto_service_added", f"/{full}", None, methods, "none")
    return rules.out


class _Rules:
    def __init__(self, base: Schema, head: Schema) -> None:
        self.base, self.head = base, head
        self.out = Changes()

    # Messages and fields.

    def message(self, b: Message, h: Message | None) -> None:
        where = f"/{b.full_name}"
        if h is None:
            if not b.map_entry:  # MESSAGE_NO_DELETE is FILE-only; a map's entry goes with its field
                self.out.add(b.file, "proto_message_removed", where, "message", None, "none")
            return
        add = self._adder(h.file)
        if b.message_set != h.message_set:  # MESSAGE_SAME_MESSAGE_SET_WIRE_FORMAT (WIRE)
            add("proto_message_wire_format_changed", where, _message_set(b), _message_set(h), "wire")
        b_num = {f.number: f for f in b.fields}
        b_name = {f.name: f for f in b.fields}
        h_num = {f.number: f for f in h.fields}
        h_name = {f.name: f for f in h.fields}
        for bf in sorted(b.fields, key=lambda f: f.number):
            hf = h_num.get(bf.number)
            moved = h_name.get(bf.name)
            if moved is not None and moved.number != bf.number:
                # Stricter than buf (see the module docstring): old callers' values go to the wrong
                # field, or nowhere, while both sides' own tests stay green.
                add("proto_field_number_changed", f"{where}/{bf.name}", bf.label(), moved.label(), "wire")
            elif hf is None:
                self._field_removed(add, where, bf, h)
            else:
                self._field(add, where, bf, hf)
        for hf in sorted(h.fields, key=lambda f: f.number):
            previous = b_name.get(hf.name)
            if hf.number in b_num or (previous is not None and previous.number != hf.number):
                continue  # compared above, or the other end of a renumbering
            pointer = f"{where}/{hf.name}"
            if _reserved(hf.number, b.reserved):
                # RESERVED_MESSAGE_NO_DELETE (WIRE): old data may still carry the retired number.
                add("proto_reserved_reused", pointer, f"reserved {hf.number}", hf.label(), "wire")
            elif hf.name in b.reserved_names:
                add("proto_reserved_reused", pointer, f'reserved name "{hf.name}"', hf.label(), "json")
            elif hf.cardinality == "required":
                # MESSAGE_SAME_REQUIRED_FIELDS (WIRE): an old sender never sets it, so parsing fails.
                add("proto_field_added", pointer, None, hf.label(), "wire")
            else:
                add("proto_field_added", pointer, None, hf.label(), "none")
        self._reserved_removed(add, where, b.reserved, h)
        used_names = set(h_name)
        for name in sorted(b.reserved_names - h.reserved_names - used_names):
            add("proto_reserved_removed", f"{where}/reserved", f'name "{name}"', None, "json")

    def _field_removed(self, add: _Add, where: str, bf: Field, h: Message) -> None:
        pointer = f"{where}/{bf.name}"
        if not _reserved(bf.number, h.reserved):
            # FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED (WIRE): an unreserved number can be reused later
            # with another type, and whoever still reads the field gets its default silently.
            add("proto_field_removed", pointer, bf.label(), None, "wire")
        elif bf.name not in h.reserved_names:
            # FIELD_NO_DELETE_UNLESS_NAME_RESERVED is WIRE_JSON only.
            add("proto_field_removed", pointer, bf.label(), "number reserved, name not", "json")
        else:
            add("proto_field_removed", pointer, bf.label(), "number and name reserved", "none")

    def _field(self, add: _Add, where: str, bf: Field, hf: Field) -> None:
        """The same number on both sides. Pointers name the field as base callers know it; when the head
        renamed it, the texts carry both names."""
        pointer = f"{where}/{bf.name}"
        named = bf.name != hf.name
        if named:  # FIELD_SAME_NAME is WIRE_JSON, not WIRE: names are not on the wire
            add("proto_field_renamed", pointer, bf.label(named=True), hf.label(named=True), "json")
        elif (
            bf.json_name and hf.json_name and bf.json_name != hf.json_name
        ):  # FIELD_SAME_JSON_NAME: WIRE_JSON
            add("proto_field_json_name_changed", pointer, bf.json_name, hf.json_name, "json")
        if (bf.kind, bf.type_name) != (hf.kind, hf.type_name):
            category = self._type_category(bf, hf)
            add("proto_field_type_changed", pointer, bf.label(named=named), hf.label(named=named), category)
        if bf.cardinality != hf.cardinality:
            category = (
                "wire"
                if _CARD_WIRE[bf.cardinality] != _CARD_WIRE[hf.cardinality]
                else "json"
                if _CARD_JSON[bf.cardinality] != _CARD_JSON[hf.cardinality]
                else "none"
            )
            add("proto_cardinality_changed", pointer, _card(bf), _card(hf), category)
        if bf.oneof != hf.oneof:
            # FIELD_SAME_ONEOF (WIRE): setting a oneof member clears its siblings, so a field moved in,
            # out or across makes old and new parsers drop different values. protobuf.dev calls a lone
            # field moved into a new oneof safe; buf does not, and neither does this.
            add("proto_oneof_changed", pointer, _oneof(bf), _oneof(hf), "wire")

    def _type_category(self, bf: Field, hf: Field) -> Category:
        if bf.kind == hf.kind:
            if bf.kind == "enum" and self._enum_compatible(bf.type_name, hf.type_name):
                return "none"  # the same enum moved: buf accepts the same short name and a superset
            return "wire"  # another message or enum type (FIELD_WIRE_COMPATIBLE_TYPE compares names)
        wire_ok = (bf.kind, hf.kind) == ("string", "bytes") or (
            bf.kind in _WIRE_GROUP and _WIRE_GROUP[bf.kind] == _WIRE_GROUP.get(hf.kind)
        )
        if not wire_ok:
            return "wire"
        json_ok = bf.kind in _JSON_GROUP and _JSON_GROUP[bf.kind] == _JSON_GROUP.get(hf.kind)
        return "none" if json_ok else "json"

    def _enum_compatible(self, base_name: str, head_name: str) -> bool:
        b, h = self.base.enums.get(base_name), self.head.enums.get(head_name)
        if b is None or h is None or b.full_name.rsplit(".", 1)[-1] != h.full_name.rsplit(".", 1)[-1]:
            return False
        return {(v.number, v.name) for v in b.values} <= {(v.number, v.name) for v in h.values}

    def _reserved_removed(
        self, add: _Add, where: str, b_ranges: Iterable[tuple[int, int]], h: Message | Enum
    ) -> None:
        """RESERVED_MESSAGE_NO_DELETE / RESERVED_ENUM_NO_DELETE (WIRE): a reservation given up. Where a
        head element already uses a number of it, `proto_reserved_reused` has said so instead."""
        used = [f.number for f in h.fields] if isinstance(h, Message) else [v.number for v in h.values]
        for start, end in _uncovered(sorted(b_ranges), sorted(h.reserved)):
            if not any(start <= number < end for number in used):
                add("proto_reserved_removed", f"{where}/reserved", _range(start, end), None, "wire")

    # Enums.

    def enum(self, b: Enum, h: Enum | None) -> None:
        where = f"/{b.full_name}"
        if h is None:  # ENUM_NO_DELETE is FILE-only
            self.out.add(b.file, "proto_enum_removed", where, "enum", None, "none")
            return
        add = self._adder(h.file)
        b_num: dict[int, list[str]] = {}
        h_num: dict[int, list[str]] = {}
        for value in b.values:
            b_num.setdefault(value.number, []).append(value.name)
        for value in h.values:
            h_num.setdefault(value.number, []).append(value.name)
        for number, names in sorted(b_num.items()):
            pointer = f"{where}/{names[0]}"
            text = f"{' / '.join(names)} = {number}"
            if number not in h_num:
                if not _reserved(number, h.reserved):
                    # ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED (WIRE)
                    add("proto_enum_value_removed", pointer, text, None, "wire")
                elif not set(names) <= h.reserved_names:  # ..._UNLESS_NAME_RESERVED: WIRE_JSON
                    add("proto_enum_value_removed", pointer, text, "number reserved, name not", "json")
                else:
                    add("proto_enum_value_removed", pointer, text, "number and name reserved", "none")
            elif not set(h_num[number]) <= set(names):
                # ENUM_VALUE_SAME_NAME is WIRE_JSON: enums travel as numbers, JSON carries the name.
                renamed = f"{' / '.join(h_num[number])} = {number}"
                add("proto_enum_value_renamed", pointer, text, renamed, "json")
        for number, names in sorted(h_num.items()):
            if number in b_num:
                continue
            pointer = f"{where}/{names[0]}"
            text = f"{' / '.join(names)} = {number}"
            if _reserved(number, b.reserved):
                add("proto_reserved_reused", pointer, f"reserved {number}", text, "wire")
            else:
                add("proto_enum_value_added", pointer, None, text, "none")
        self._reserved_removed(add, where, b.reserved, h)
        for name in sorted(b.reserved_names - h.reserved_names - {v.name for v in h.values}):
            add("proto_reserved_removed", f"{where}/reserved", f'name "{name}"', None, "json")

    # Services and RPCs.

    def service(self, b: Service, h: Service | None) -> None:
        where = f"/{b.full_name}"
        if h is None:
            # Stricter than buf's WIRE (see the module docstring): every call answers UNIMPLEMENTED.
            methods = f"service, {len(b.methods)} method{'s' if len(b.methods) != 1 else ''}"
            self.out.add(b.file, "proto_service_removed", where, methods, None, "wire")
            return
        add = self._adder(h.file)
        h_methods = {m.name: m for m in h.methods}
        b_names = {m.name for m in b.methods}
        for bm in b.methods:
            pointer = f"{where}/{bm.name}"
            hm = h_methods.get(bm.name)
            if hm is None:  # stricter than buf's WIRE, as for services
                add("proto_rpc_removed", pointer, _signature(bm), None, "wire")
                continue
            if bm.input != hm.input:  # RPC_SAME_REQUEST_TYPE (WIRE)
                add("proto_rpc_type_changed", pointer, f"request {bm.input}", f"request {hm.input}", "wire")
            if bm.output != hm.output:  # RPC_SAME_RESPONSE_TYPE (WIRE)
                was, now = f"response {bm.output}", f"response {hm.output}"
                add("proto_rpc_type_changed", pointer, was, now, "wire")
            if (bm.client_streaming, bm.server_streaming) != (hm.client_streaming, hm.server_streaming):
                # RPC_SAME_CLIENT_STREAMING / RPC_SAME_SERVER_STREAMING (WIRE)
                add("proto_rpc_streaming_changed", pointer, _streaming(bm), _streaming(hm), "wire")
            if bm.idempotency != hm.idempotency:  # RPC_SAME_IDEMPOTENCY_LEVEL (WIRE)
                add("proto_rpc_idempotency_changed", pointer, bm.idempotency, hm.idempotency, "wire")
        for hm in h.methods:
            if hm.name not in b_names:
                add("proto_rpc_added", f"{where}/{hm.name}", None, _signature(hm), "none")

    def _adder(self, file: str) -> _Add:
        def add(kind: str, pointer: str, base: str | None, head: str | None, category: Category) -> None:
            self.out.add(file, kind, pointer, base, head, category)

        return add


def _reserved(number: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(start <= number < end for start, end in ranges)


def _uncovered(ranges: list[tuple[int, int]], cover: list[tuple[int, int]]) -> Iterable[tuple[int, int]]:
    """The parts of `ranges` that no range of `cover` contains, as interval arithmetic (ranges can span
    up to 2^29 numbers: never enumerated)."""
    for start, end in ranges:
        cursor = start
        for c_start, c_end in cover:
            if c_end <= cursor or c_start >= end:
                continue
            if c_start > cursor:
                yield cursor, c_start
            cursor = max(cursor, c_end)
            if cursor >= end:
                break
        if cursor < end:
            yield cursor, end


def _range(start: int, end: int) -> str:
    return f"reserved {start}" if end - start == 1 else f"reserved {start} to {end - 1}"


def _card(field: Field) -> str:
    return {"singular": "singular (implicit presence)", "optional": "optional (explicit presence)"}.get(
        field.cardinality, field.cardinality
    )


def _oneof(field: Field) -> str:
    return f"in oneof {field.oneof}" if field.oneof else "outside any oneof"


def _message_set(message: Message) -> str:
    return "message_set_wire_format" if message.message_set else "regular wire format"


def _streaming(method: Method) -> str:
    return {
        (False, False): "unary",
        (True, False): "client streaming",
        (False, True): "server streaming",
        (True, True): "bidirectional streaming",
    }[(method.client_streaming, method.server_streaming)]


def _signature(method: Method) -> str:
    return f"{_streaming(method)} {method.input} → {method.output}"


def _clip(text: str) -> str:
    return text if len(text) <= limits.MAX_TEXT else text[: limits.MAX_TEXT - 1] + "…"


def _maybe(text: str | None) -> str | None:
    return None if text is None else _clip(text)

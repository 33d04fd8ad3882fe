"""A FileDescriptorSet as the rules see it: typed, flat, keyed by full name.

protobuf ships no type information, so the descriptor messages are read here once, into frozen
dataclasses, and nothing else touches them: the rules stay typed and never see a protobuf object.
Full names carry no leading dot (`shop.pricing.v1.Quote`); a nested type is `Outer.Inner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

# FieldDescriptorProto.Type numbers → the .proto spelling.
KINDS = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64", 7: "fixed32", 8: "bool",
    9: "string", 10: "group", 11: "message", 12: "bytes", 13: "uint32", 14: "enum", 15: "sfixed32",
    16: "sfixed64", 17: "sint32", 18: "sint64",
}  # fmt: skip
_LABEL_REPEATED, _LABEL_REQUIRED = 3, 2
_PRESENCE_EXPLICIT, _PRESENCE_IMPLICIT, _PRESENCE_REQUIRED = 1, 2, 3  # FeatureSet.FieldPresence
_IDEMPOTENCY = {0: "unknown", 1: "no side effects", 2: "idempotent"}


class _InFile(Protocol):
    @property
    def file(self) -> str: ...


_T = TypeVar("_T", bound=_InFile)


class NotADescriptorSet(Exception):
    """The bytes are not a serialized FileDescriptorSet."""


@dataclass(frozen=True)
class Field:
    name: str
    number: int
    kind: str  # `int64`, `message`, `enum`, ...
    type_name: str  # the message or enum's full name; "" for scalars
    cardinality: str  # singular (implicit presence) | optional (explicit) | required | repeated | map
    oneof: str | None  # the (non-synthetic) oneof it belongs to
    json_name: str

    @property
    def type_label(self) -> str:
        return self.type_name or self.kind

    def label(self, *, named: bool = False) -> str:
        """`field 2 int64`, `field 4 repeated shop.v1.Line`, `field 3 optional string note` (`named`): what
        the finding texts show. Implicit presence, proto3's plain singular field, goes unsaid."""
        card = "" if self.cardinality == "singular" else f"{self.cardinality} "
        return f"field {self.number} {card}{self.type_label}" + (f" {self.name}" if named else "")


@dataclass(frozen=True)
class Message:
    full_name: str
    file: str
    fields: tuple[Field, ...]
    reserved: tuple[tuple[int, int], ...]  # [start, end) ranges
    reserved_names: frozenset[str]
    message_set: bool
    map_entry: bool  # the generated `FooEntry` of a `map<…>` field


@dataclass(frozen=True)
class EnumValue:
    name: str
    number: int


@dataclass(frozen=True)
class Enum:
    full_name: str
    file: str
    values: tuple[EnumValue, ...]
    reserved: tuple[tuple[int, int], ...]  # [start, end) ranges (the descriptor's are inclusive)
    reserved_names: frozenset[str]


@dataclass(frozen=True)
class Method:
    name: str
    input: str
    output: str
    client_streaming: bool
    server_streaming: bool
    idempotency: str


@dataclass(frozen=True)
class Service:
    full_name: str
    file: str
    methods: tuple[Method, ...]


@dataclass
class Schema:
    """Everything in one descriptor set. `files` maps a file's name to its package."""

    files: dict[str, str] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    enums: dict[str, Enum] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def merge(self, other: Schema) -> None:
        """Another set's files, where this one does not have them already (first one wins, as in protoc)."""
        fresh = {name for name in other.files if name not in self.files}
        self.files.update({name: other.files[name] for name in fresh})
        self.messages.update(_fresh(other.messages, self.messages, fresh))
        self.enums.update(_fresh(other.enums, self.enums, fresh))
        self.services.update(_fresh(other.services, self.services, fresh))


def _fresh(theirs: dict[str, _T], mine: dict[str, _T], files: set[str]) -> dict[str, _T]:
    return {k: v for k, v in theirs.items() if v.file in files and k not in mine}


def parse(data: bytes) -> Schema:
    """Raises NotADescriptorSet on bytes that do not parse (protobuf bounds the nesting it decodes)."""
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise NotADescriptorSet(f"not a FileDescriptorSet ({str(exc)[:120] or type(exc).__name__})") from None
    schema = Schema()
    map_entries: set[str] = set()
    for file in fds.file:
        _collect_map_entries(file.message_type, _prefix(str(file.package)), map_entries)
    for file in fds.file:
        name = str(file.name)
        if name in schema.files:
            continue
        schema.files[name] = str(file.package)
        ctx = _FileContext(name, str(file.syntax) or "proto2", _presence(file.options), map_entries)
        prefix = _prefix(str(file.package))
        for message in file.message_type:
            _add_message(schema, ctx, message, prefix)
        for enum in file.enum_type:
            _add_enum(schema, name, enum, prefix)
        for service in file.service:
            full = prefix + str(service.name)
            schema.services[full] = Service(
                full_name=full,
                file=name,
                methods=tuple(
                    Method(
                        name=str(m.name),
                        input=_strip(m.input_type),
                        output=_strip(m.output_type),
                        client_streaming=bool(m.client_streaming),
                        server_streaming=bool(m.server_streaming),
                        idempotency=_IDEMPOTENCY.get(int(m.options.idempotency_level), "unknown"),
                    )
                    for m in service.method
                ),
            )
    return schema


@dataclass(frozen=True)
class _FileContext:
    name: str
    syntax: str  # proto2 | proto3 | editions
    presence: int  # the file's default field presence under editions (0: unset → explicit)
    map_entries: set[str]


def _prefix(package: str) -> str:
    return f"{package}." if package else ""


def _strip(type_name: Any) -> str:
    return str(type_name).lstrip(".")


def _presence(options: Any) -> int:
    return int(options.features.field_presence) if options.HasField("features") else 0


def _collect_map_entries(messages: Any, prefix: str, out: set[str]) -> None:
    for message in messages:
        full = prefix + str(message.name)
        if message.options.map_entry:
            out.add(full)
        _collect_map_entries(message.nested_type, full + ".", out)


def _add_message(schema: Schema, ctx: _FileContext, message: Any, prefix: str) -> None:
    full = prefix + str(message.name)
    oneofs = [str(o.name) for o in message.oneof_decl]
    schema.messages[full] = Message(
        full_name=full,
        file=ctx.name,
        fields=tuple(_field(ctx, f, oneofs) for f in message.field),
        reserved=tuple((int(r.start), int(r.end)) for r in message.reserved_range),
        reserved_names=frozenset(str(n) for n in message.reserved_name),
        message_set=bool(message.options.message_set_wire_format),
        map_entry=bool(message.options.map_entry),
    )
    for nested in message.nested_type:
        _add_message(schema, ctx, nested, full + ".")
    for enum in message.enum_type:
        _add_enum(schema, ctx.name, enum, full + ".")


def _add_enum(schema: Schema, file: str, enum: Any, prefix: str) -> None:
    full = prefix + str(enum.name)
    schema.enums[full] = Enum(
        full_name=full,
        file=file,
        values=tuple(EnumValue(name=str(v.name), number=int(v.number)) for v in enum.value),
        reserved=tuple((int(r.start), int(r.end) + 1) for r in enum.reserved_range),
        reserved_names=frozenset(str(n) for n in enum.reserved_name),
    )


def _field(ctx: _FileContext, f: Any, oneofs: list[str]) -> Field:
    kind = KINDS.get(int(f.type), f"type {int(f.type)}")
    type_name = _strip(f.type_name) if kind in ("message", "enum", "group") else ""
    synthetic = bool(f.proto3_optional)
    oneof = None
    if f.HasField("oneof_index") and not synthetic and 0 <= int(f.oneof_index) < len(oneofs):
        oneof = oneofs[int(f.oneof_index)]
    return Field(
        name=str(f.name),
        number=int(f.number),
        kind=kind,
        type_name=type_name,
        cardinality=_cardinality(ctx, f, type_name, synthetic),
        oneof=oneof,
        json_name=str(f.json_name),
    )


def _cardinality(ctx: _FileContext, f: Any, type_name: str, synthetic: bool) -> str:
    label = int(f.label)
    if label == _LABEL_REPEATED:
        return "map" if type_name in ctx.map_entries else "repeated"
    presence = _presence(f.options) or ctx.presence
    if label == _LABEL_REQUIRED or (ctx.syntax == "editions" and presence == _PRESENCE_REQUIRED):
        return "required"
    if ctx.syntax == "proto3":
        return "optional" if synthetic else "singular"
    if ctx.syntax == "editions" and presence == _PRESENCE_IMPLICIT:
        return "singular"
    return "optional"

"""A service's compiled protos as the gRPC probes use them: which methods are safe to call, how to build
a request, how to read an answer.

The protos are the *base* commit's: what every caller was built with, so an answer is read the way a
caller reads it. They are compiled by the proto check's own path (`bot.verify.proto`: staged, bounded,
grpcio-tools' protoc) into a `FileDescriptorSet`, loaded into a protobuf `DescriptorPool`.

Safe methods are the unary ones marked `option idempotency_level = NO_SIDE_EFFECTS;`, the standard
marker (gRPC itself sends such calls as GETs where it can); nothing else is ever probed, since a probe
reaches the candidate and both controls and must not write.

An answer is decoded with `json_format.MessageToDict` (proto field names, fields without presence
printed with their defaults, so a value changed to 0 is a changed value, not a vanished field), and
the fields the base descriptors do not know are kept where they sit as `#NUMBER` members (`/amount/#3`:
`varint 1200`): a renumbered field decodes as unknown, and that is what a caller's decoder sees too.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    unknown_fields,
)
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped]

from bot.verify.proto import protoc, source

__all__ = ["UNKNOWN_PREFIX", "Method", "NoSchema", "Schema", "Undecodable", "compile_schema", "load_schema"]

UNKNOWN_PREFIX: Final = "#"
"""A decoded answer's member for a field the base descriptors do not know: `#` and its number."""
_NO_SIDE_EFFECTS: Final = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
_SHOWN_BYTES: Final = 24
_WIRE: Final = {0: "varint", 1: "fixed64", 2: "bytes", 3: "group", 5: "fixed32"}
_INTEGERS: Final = frozenset({"int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
                              "fixed64", "sfixed32", "sfixed64"})  # fmt: skip


class NoSchema(Exception):
    """The base protos could not be compiled or loaded: one line, naming the file at fault."""


class Undecodable(Exception):
    """An answer's bytes are not the method's output message: one line."""


@dataclass(frozen=True)
class Method:
    """One safe unary method: `path` is what goes on the wire (`/shop.pricing.v1.Pricing/GetQuote`)."""

    path: str
    input: Any  # the request's message Descriptor
    output: Any  # the answer's message Descriptor


@dataclass(frozen=True)
class Schema:
    """The descriptors of one service's protos."""

    pool: Any
    methods: tuple[Method, ...]

    def encode(self, method: Method, values: Mapping[str, object]) -> bytes:
        """The request message with `values` set on top-level fields (names the descriptor has); a value
        the field cannot hold (an int64's into an int32) is left out. Partial: a proto2 `required`
        field left unset is the server's to refuse, as it would refuse any caller's."""
        message = message_factory.GetMessageClass(method.input)()
        for name, value in values.items():
            try:
                setattr(message, name, value)
            except (TypeError, ValueError, AttributeError):
                continue
        data: bytes = message.SerializePartialToString()
        return data

    def decode(self, method: Method, data: bytes) -> dict[str, Any]:
        """The answer as JSON-ready data; Undecodable when the bytes are not the output message."""
        message = message_factory.GetMessageClass(method.output)()
        try:
            message.ParseFromString(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise Undecodable(f"not a {method.output.full_name} ({len(data)} bytes): {exc}") from None
        out: dict[str, Any] = json_format.MessageToDict(
            message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )
        _keep_unknown(message, out)
        return out

    def scalars(self, method: Method, data: bytes) -> Iterator[tuple[str, str, object]]:
        """(field name, type kind, value) of every scalar field set anywhere in an answer: the values a
        later request may reuse. Nothing when the bytes do not decode."""
        message = message_factory.GetMessageClass(method.output)()
        try:
            message.ParseFromString(data)
        except (DecodeError, RecursionError, ValueError):
            return
        yield from _scalars(message, 0)

    def inputs(self, method: Method) -> list[tuple[str, str]]:
        """(name, type kind) of the request's top-level scalar fields, which a probe may fill."""
        return [
            (f.name, kind)
            for f in method.input.fields
            if not f.is_repeated and (kind := _kind(f)) is not None
        ]


def compile_schema(root: Path, files: Sequence[str], import_paths: Sequence[str]) -> Schema:
    """The protos `files` names (as `grpc.protos`) in the checkout at `root`, compiled. Raises NoSchema."""
    with tempfile.TemporaryDirectory(prefix="loopgate-grpc-") as scratch:
        try:
            staged = source.stage(root, files, import_paths, Path(scratch))
            sets = [protoc.compile_protos(staged.directory, staged.inputs, staged.repo_paths)]
            sets += [protoc.read_descriptor_set(path) for path in staged.descriptor_sets]
        except (source.Refused, protoc.CompileError) as exc:
            raise NoSchema(str(exc)) from None
    return load_schema(sets)


def load_schema(sets: Sequence[bytes]) -> Schema:
    """Serialized FileDescriptorSets in one pool, each file added after what it imports."""
    files: dict[str, Any] = {}
    try:
        for data in sets:
            for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
                files.setdefault(proto.name, proto)
    except DecodeError as exc:
        raise NoSchema(f"not a FileDescriptorSet: {exc}") from None
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    pending = list(files.values())
    while pending:
        ready = [p for p in pending if all(d in added or d not in files for d in p.dependency)]
        if not ready:
            raise NoSchema(f"{pending[0].name}: imports that never resolve (a cycle)")
        for proto in ready:
            try:
                pool.Add(proto)
            except (TypeError, ValueError) as exc:
                raise NoSchema(f"{proto.name}: {exc}") from None
            added.add(proto.name)
        pending = [p for p in pending if p.name not in added]
    methods = []
    for proto in files.values():
        for service in proto.service:
            prefix = f"{proto.package}.{service.name}" if proto.package else service.name
            for method in service.method:
                if method.client_streaming or method.server_streaming:
                    continue
                if method.options.idempotency_level != _NO_SIDE_EFFECTS:
                    continue
                found = pool.FindMethodByName(f"{prefix}.{method.name}")
                path = f"/{prefix}/{method.name}"
                methods.append(Method(path, found.input_type, found.output_type))
    return Schema(pool, tuple(sorted(methods, key=lambda m: m.path)))


def _kind(field: Any) -> str | None:
    """A scalar field's type kind for matching values (integers are one kind); None for the rest."""
    name = {
        field.TYPE_STRING: "string",
        field.TYPE_BOOL: "bool",
        field.TYPE_DOUBLE: "number",
        field.TYPE_FLOAT: "number",
    }.get(field.type)
    if name is not None:
        return name
    if field.type == field.TYPE_ENUM:
        return f"enum {field.enum_type.full_name}"
    spelled = {
        field.TYPE_INT32: "int32", field.TYPE_INT64: "int64", field.TYPE_UINT32: "uint32",
        field.TYPE_UINT64: "uint64", field.TYPE_SINT32: "sint32", field.TYPE_SINT64: "sint64",
        field.TYPE_FIXED32: "fixed32", field.TYPE_FIXED64: "fixed64", field.TYPE_SFIXED32: "sfixed32",
        field.TYPE_SFIXED64: "sfixed64",
    }.get(field.type)  # fmt: skip
    return "integer" if spelled in _INTEGERS else None


def _scalars(message: Message, depth: int) -> Iterator[tuple[str, str, object]]:
    if depth > 32:
        return
    for field, value in message.ListFields():
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.type == field.TYPE_MESSAGE and not is_map:
            items = value if field.is_repeated else [value]
            for item in items:
                yield from _scalars(item, depth + 1)
            continue
        kind = _kind(field)
        if kind is None or is_map:
            continue
        for item in value if field.is_repeated else [value]:
            yield field.name, kind, item


def _keep_unknown(message: Message, out: Any) -> None:
    """Adds each unknown field of `message` and of every message below it to the decoded data, at its
    place (`#3`), iteratively: the parser's own depth limit bounds the walk."""
    stack: list[tuple[Message, Any]] = [(message, out)]
    while stack:
        current, data = stack.pop()
        if not isinstance(data, dict):
            continue  # a well-known type json_format prints as a string (Timestamp, Duration, ...)
        shown: dict[int, list[str]] = {}
        for item in unknown_fields.UnknownFieldSet(current):
            shown.setdefault(item.field_number, []).append(_unknown_value(item.wire_type, item.data))
        for number, values in sorted(shown.items()):
            data[f"{UNKNOWN_PREFIX}{number}"] = values[0] if len(values) == 1 else values
        for field, value in current.ListFields():
            if field.type != field.TYPE_MESSAGE or field.name not in data:
                continue
            below = data[field.name]
            if field.message_type.GetOptions().map_entry:
                if field.message_type.fields_by_name["value"].type == field.TYPE_MESSAGE:
                    stack += [
                        (v, below.get(_map_key(k))) for k, v in value.items() if isinstance(below, dict)
                    ]
            elif field.is_repeated:
                if isinstance(below, list):
                    stack += list(zip(value, below, strict=False))
            else:
                stack.append((value, below))


def _map_key(key: object) -> str:
    return ("true" if key else "false") if isinstance(key, bool) else str(key)


def _unknown_value(wire_type: int, data: object) -> str:
    """`varint 1200`, `bytes 3: 08b009`, `bytes 3: "mug"`: what a field the base descriptors do not know
    holds (length-delimited bytes that read as text are shown as text; a message's are not)."""
    kind = _WIRE.get(wire_type, f"wire type {wire_type}")
    if isinstance(data, bytes | bytearray):
        head, more = bytes(data[:_SHOWN_BYTES]), "…" if len(data) > _SHOWN_BYTES else ""
        try:
            text = head.decode()
        except UnicodeDecodeError:
            text = ""
        if text and text.isprintable():  # most likely a string: shown as one
            return f"{kind} {len(data)}: {json.dumps(text + more, ensure_ascii=False)}"
        return f"{kind} {len(data)}: {head.hex()}{more}"
    if wire_type == 3:
        return f"{kind} ({len(data)} fields)" if isinstance(data, Sized) else kind
    return f"{kind} {data}"

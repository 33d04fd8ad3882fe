"""Loading `.loopgate.yml` with errors that name file, line and field.

PyYAML's composed node tree keeps the line of every key; pydantic's error locations are mapped back onto
it, so `.loopgate.yml:14 services.orders.paths: expected a list` points at the offending line.

The file comes from a commit an agent may have written, so YAML does no work the limits below do not
allow: size is checked before decoding, and aliases, expansion and nesting while composing, before any
Python object is constructed (constructing and validating a "billion laughs" is what explodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.config import environ
from bot.config.errors import ConfigError
from bot.config.grpc import health_fits
from bot.config.schema import Config

MAX_CONFIG_BYTES = 1024 * 1024
"""A config is a few kilobytes; past 1 MiB it is not a config."""
MAX_ALIASES = 50
"""Aliases (`*name`) in one file: enough to share blocks, too few to build a bomb from."""
MAX_VALUES = 100_000
"""Values in the document with every alias expanded: stops a narrow bomb that stays under MAX_ALIASES."""
MAX_DEPTH = 64
"""Nesting of mappings and lists; the schema itself is at most six deep."""

NOTHING_TO_VERIFY = "declare at least one service; with none, nothing could ever be verified"

_SHORT_MESSAGES = {
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "float_type": "expected a number of seconds",
    "float_parsing": "expected a number of seconds",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "extra_forbidden": "unknown key",
    "missing": "required",
}

_FIELD_MESSAGES = {
    ("services", "missing"): NOTHING_TO_VERIFY,
    ("services", "too_short"): NOTHING_TO_VERIFY,
}


def _message(error: Any, field: str) -> str:
    kind = error["type"]
    if (field, kind) in _FIELD_MESSAGES:
        return _FIELD_MESSAGES[(field, kind)]
    if kind in _SHORT_MESSAGES:
        return _SHORT_MESSAGES[kind]
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if message[:2].isupper():  # an acronym or a method name: keep it as written
        return message
    return message[:1].lower() + message[1:]


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest node along `loc` (the key's line for a mapping entry)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that enforces the limits and refuses duplicate keys while composing.

    PyYAML lets the last duplicate key win silently, so a second `orders:` could replace the one a
    reviewer read. Aliases are counted from their events; `_size` remembers how many values each
    finished node expands to, so an alias adds its anchor's whole expansion to the running count (and
    an alias to an unfinished node is recursive).
    """

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self._aliases = 0
        self._values = 0
        self._depth = 0
        self._size: dict[yaml.Node, int] = {}

    def _fail(self, mark: Any, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}:{mark.line + 1 if mark is not None else 1} {problem}")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            return self._compose_alias(event, parent, index)
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise self._fail(event.start_mark, f"nested deeper than {MAX_DEPTH} levels (the limit)")
        start = self._values
        node = super().compose_node(parent, index)
        assert node is not None  # the stubs allow None; a non-alias event always composes a node
        if isinstance(node, yaml.CollectionNode):
            self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            self._refuse_duplicate_keys(node)
        self._size[node] = self._values - start + 1
        self._count(1, event.start_mark)
        return node

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        first: dict[tuple[str, Any], yaml.Node] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                seen = first.setdefault((key.tag, key.value), key)
                if seen is not key:
                    where = seen.start_mark.line + 1
                    raise self._fail(key.start_mark, f"duplicate key {key.value!r} (first at line {where})")

    def _compose_alias(self, event: yaml.AliasEvent, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._aliases += 1
        if self._aliases > MAX_ALIASES:
            raise self._fail(event.start_mark, f"more than {MAX_ALIASES} aliases (the limit)")
        node = super().compose_node(parent, index)
        if (
            node is None or node not in self._size
        ):  # its anchor is still being composed: the value would contain itself
            raise self._fail(event.start_mark, f"alias *{event.anchor} refers to a value that contains it")
        self._count(self._size[node], event.start_mark)
        return node

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise self._fail(mark, f"expands to more than {MAX_VALUES} values (the limit)")


@dataclass(frozen=True)
class ConfigFile:
    """A validated config with the node tree it came from, so later checks can name a line too."""

    config: Config
    source: str
    node: yaml.Node

    def where(self, *loc: int | str) -> str:
        """`source:line` of the value at `loc` (`"services", "api", "paths", 0`)."""
        return f"{self.source}:{_line_of(self.node, loc)}"

    def at(self, *loc: int | str) -> str:
        """`source:line field` of the value at `loc`, as the loader's own errors start."""
        return f"{self.where(*loc)} {_dotted(loc)}"


def _decode(data: bytes | str, source: str) -> str:
    """Strict UTF-8, within the size limit; a str is measured (and checked) as the bytes it stands for."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_CONFIG_BYTES:
        line = raw[:MAX_CONFIG_BYTES].count(b"\n") + 1
        raise ConfigError(f"{source}:{line} the file is larger than the limit of 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}:{line} not valid UTF-8 (byte 0x{raw[exc.start]:02x})") from None


def _compose(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The node tree and the plain data built from it, each limit checked before anything is built."""
    try:
        loader = _BoundedLoader(text, source)
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(
            f"{source}:{line} invalid YAML: character #x{exc.character:04x} is not allowed"
        ) from None
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where} invalid YAML: {exc.problem or exc.context}") from None
    finally:
        loader.dispose()


def read_config(data: bytes | str, source: str = ".loopgate.yml") -> ConfigFile:
    """Decode, parse and validate config; `source` is the name used in error messages."""
    node, data = _compose(_decode(data, source), source)
    if node is None or data is None:
        raise ConfigError(f"{source}:1 the file is empty; start with `version: 1`")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1 expected a mapping at the top level")
    try:
        loaded = ConfigFile(Config.model_validate(data), source, node)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = _strip_union_tags(tuple(error["loc"]))
        line = _line_of(node, loc)
        where = f"{source}:{line}" if line else source
        field = _dotted(loc) or "(top level)"
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where} {field}: {_message(error, _dotted(loc))}{extra}") from None
    _require_runtime_sections(loaded)
    _check_templates(loaded)
    _check_start_order(loaded)
    _check_health_protocols(loaded)
    return loaded


def _check_health_protocols(loaded: ConfigFile) -> None:
    """A health check the service's protocol cannot answer would only time out at every start: an HTTP
    GET to a gRPC server, or the gRPC health service asked of an HTTP one."""
    for name, service in sorted(loaded.config.services.items()):
        if service.local is None:
            continue
        check = service.local.health_check
        kinds = {"grpc_check": check.grpc is not None, "path_check": check.path is not None}
        why = health_fits(service.protocol, **kinds)
        if why is not None:
            raise ConfigError(f"{loaded.at('services', name, 'local', 'health')}: {why}")


def _require_runtime_sections(loaded: ConfigFile) -> None:
    """Each service and suite says how the chosen runtime runs it: a missing section is found when the
    file is read, with its line, not half-way through a run."""
    kind = loaded.config.runtime.kind
    for name, service in sorted(loaded.config.services.items()):
        if getattr(service, kind) is None:
            where = loaded.at("services", name)
            raise ConfigError(f"{where}: no `{kind}:` section, which runtime.kind {kind} needs")
    runtime = loaded.config.runtime
    if runtime.kind == "kubernetes" and runtime.kubernetes.postgres is None:
        for name, service in sorted(loaded.config.services.items()):
            if service.state is not None and service.state.postgres is not None:
                where = loaded.at("services", name, "state")
                raise ConfigError(
                    f"{where}: a postgres state needs runtime.kubernetes.postgres (the server forks copy on)"
                )
    for index, suite in enumerate(loaded.config.verify.suites):
        if (suite.run if kind == "local" else suite.kubernetes) is None:
            needs = "`run:`" if kind == "local" else "`kubernetes:`"
            where, name = loaded.at("verify", "suites", index), suite.name
            raise ConfigError(f"{where}: suite {name!r} has no {needs}, which runtime.kind {kind} needs")


def _check_templates(loaded: ConfigFile) -> None:
    """Every `${NAME}` in an `env:` value names something the process will have: a value loopgate
    gives, one `pass_env` passes, or PATH/HOME/TMPDIR. A typo is found here, with its line, not as a
    service that starts with an empty variable."""
    config = loaded.config
    for name, service in sorted(config.services.items()):
        if service.local is None:
            continue
        given = environ.service_given(config.services, state=service.state is not None)
        section: tuple[int | str, ...] = ("services", name, "local")
        _check_section(loaded, section, service.local.env, service.local.pass_env, given)
    for index, suite in enumerate(config.verify.suites):
        section = ("verify", "suites", index)
        _check_section(loaded, section, suite.env, suite.pass_env, environ.suite_given(config.services))


def _check_section(
    loaded: ConfigFile,
    section: tuple[int | str, ...],
    env: dict[str, str],
    patterns: list[str],
    given: set[str],
) -> None:
    for key, value in env.items():
        for name in environ.template_names(value):
            if name in given or name in environ.ALWAYS_GIVEN or environ.passable(name, patterns):
                continue
            if name.startswith(environ.OWN_PREFIX):
                known = ", ".join(sorted(given))
                why = f"loopgate gives no ${{{name}}} here (it gives {known})"
            else:
                why = f"${{{name}}} is neither given by loopgate nor passed by `pass_env`"
            raise ConfigError(f"{loaded.at(*section, 'env', key)}: {why}")


def _check_start_order(loaded: ConfigFile) -> None:
    """`after:` names declared services, not itself, and no cycle: the baseline could never start."""
    services = loaded.config.services
    after = {name: s.local.after for name, s in services.items() if s.local is not None}
    for name, needs in sorted(after.items()):
        for index, other in enumerate(needs):
            where = loaded.at("services", name, "local", "after", index)
            if other not in services:
                raise ConfigError(f"{where}: no service {other!r}")
            if other == name:
                raise ConfigError(f"{where}: a service cannot start after itself")
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "visiting"
        for other in after.get(name, []):
            if state.get(other) == "visiting":
                cycle = " -> ".join([*path[path.index(other) :], other])
                where = loaded.at("services", name, "local", "after", after[name].index(other))
                raise ConfigError(f"{where}: start order has a cycle: {cycle}")
            if other not in state:
                visit(other, [*path, other])
        state[name] = "done"

    for name in sorted(after):
        if name not in state:
            visit(name, [name])


def parse_config(data: bytes | str, source: str = ".loopgate.yml") -> Config:
    """Parse and validate config bytes or text; `source` is the name used in error messages."""
    return read_config(data, source).config


def _strip_union_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop the tag a discriminated union adds to locations (`runtime.local.x`, `health.check`): users
    never wrote it."""
    out: list[int | str] = []
    for index, part in enumerate(loc):
        if index > 0 and loc[index - 1] == "runtime" and part in ("local", "kubernetes"):
            continue
        if index > 0 and loc[index - 1] == "health" and part in ("path", "check"):
            continue
        out.append(part)
    return tuple(out)


def read_limited(path: Path) -> bytes:
    """A file's bytes, at most one past the size limit: enough to refuse it without reading it all."""
    try:
        with path.open("rb") as stream:
            return stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None


def load_config(path: Path) -> Config:
    """Load a config file from disk."""
    return parse_config(read_limited(path), source=path.name)

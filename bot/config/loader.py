"""Loading `.loopgate.yml` with errors that name file, line and field.

PyYAML's composed node tree keeps the line of every key; pydantic's error locations are mapped back onto
it, so `.loopgate.yml:14 services.orders.paths: expected a list` points at the offending line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.config.errors import ConfigError
from bot.config.schema import Config

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


def _message(error: Any) -> str:
    kind = error["type"]
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


def parse_config(text: str, source: str = ".loopgate.yml") -> Config:
    """Parse and validate config text; `source` is the name used in error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where} invalid YAML: {exc.problem or exc.context}") from None
    if data is None:
        raise ConfigError(f"{source}:1 the file is empty; start with `version: 1`")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1 expected a mapping at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = _strip_union_tags(tuple(error["loc"]))
        line = _line_of(node, loc)
        where = f"{source}:{line}" if line else source
        field = _dotted(loc) or "(top level)"
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where} {field}: {_message(error)}{extra}") from None


def _strip_union_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop the tag a discriminated union adds to locations (`runtime.local.x`): users never wrote it."""
    out: list[int | str] = []
    for index, part in enumerate(loc):
        if index > 0 and loc[index - 1] == "runtime" and part in ("local", "kubernetes"):
            continue
        out.append(part)
    return tuple(out)


def load_config(path: Path) -> Config:
    """Load a config file from disk."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}:1 not valid UTF-8") from None
    return parse_config(text, source=path.name)

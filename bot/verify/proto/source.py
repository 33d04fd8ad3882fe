"""The `.proto` files of one checkout, gathered and copied into a private staging directory for protoc.

protoc is never pointed at the checkout itself: it gets the staging directory, holding only the files
the configuration names and what they import, each one checked on the way in. So an import that climbs
out of the repository (`import "../../etc/passwd"`, `import "/etc/passwd"`), a symlink that leads out of
the checkout, an oversized file, a file nested past `MAX_NESTING` or a tree with more files than
`MAX_FILES` is refused here with a one-line cause (`Refused`), and protoc cannot read anything else even
if this scan missed an import form. Import cycles are left to protoc, which names the cycle; the walk
below visits each file once, so a cycle cannot make it loop.

Names: a *repository path* is relative to the checkout root (`proto/shop/pricing/v1/pricing.proto`); a
*virtual name* is relative to the import path it was found under (`shop/pricing/v1/pricing.proto`), the
name protoc, the descriptors and `import` statements use.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bot.verify.proto import limits

DESCRIPTOR_SET_SUFFIXES = (".binpb", ".pb")
_GLOB_CHARS = re.compile(r"[*?\[]")
_COMMENT_OR_STRING = re.compile(r'//[^\n]*|/\*.*?(?:\*/|\Z)|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
_IMPORT = re.compile(r"\bimport\s+(?:(?:public|weak)\s+)?(?:\"([^\"\n]*)\"|'([^'\n]*)')\s*;")
_STRING = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'')
_BRACE = re.compile(r"[{}]")


class Refused(Exception):
    """Why one side's protos were not compiled, in one line that names the file (and line) at fault."""


@dataclass
class Staged:
    """What protoc gets: the staging directory, the virtual names to compile, and where each came from."""

    directory: Path
    inputs: list[str] = field(default_factory=list)
    repo_paths: dict[str, str] = field(default_factory=dict)  # virtual name → repository path
    descriptor_sets: list[Path] = field(default_factory=list)


def stage(root: Path, patterns: Sequence[str], import_paths: Sequence[str], into: Path) -> Staged:
    """Copies the named `.proto` files and their imports from `root` into `into`; prebuilt descriptor
    sets named in `patterns` are only located. Raises `Refused`."""
    try:
        real_root = root.resolve(strict=True)
    except OSError:
        raise Refused(f"checkout {root} does not exist") from None
    roots = [_import_path(real_root, ip) for ip in (import_paths or ["."])]
    staged = Staged(directory=into)
    queue: deque[tuple[str, str]] = deque()  # (virtual name, repository path)
    for rel in _expand(real_root, patterns):
        if rel.endswith(DESCRIPTOR_SET_SUFFIXES):
            staged.descriptor_sets.append(_inside(real_root, rel, rel))
            continue
        if not rel.endswith(".proto"):
            raise Refused(f"{rel}: neither a .proto file nor a descriptor set (.binpb, .pb)")
        virtual = _virtual_name(rel, roots)
        if virtual not in staged.repo_paths:
            staged.inputs.append(virtual)
            staged.repo_paths[virtual] = rel
            queue.append((virtual, rel))
    total = 0
    while queue:
        virtual, rel = queue.popleft()
        if len(staged.repo_paths) > limits.MAX_FILES:
            raise Refused(f"over {limits.MAX_FILES} .proto files (with imports): refused")
        data = _read(real_root, rel)
        total += len(data)
        if total > limits.MAX_TOTAL_BYTES:
            raise Refused(f"the .proto files exceed {limits.MAX_TOTAL_BYTES:,} bytes together: refused")
        text = _decode(data, rel)
        _check_nesting(text, rel)
        target = into / virtual
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        for line, name in _imports(text):
            _check_import(name, rel, line)
            for ip, ip_rel in roots:
                candidate = ip / name
                if not os.path.lexists(candidate):
                    continue
                imported_rel = str(PurePosixPath(ip_rel, name)) if ip_rel != "." else name
                if name not in staged.repo_paths:
                    _inside(real_root, imported_rel, f'{rel}:{line}: import "{_clip(name)}"')
                    staged.repo_paths[name] = imported_rel
                    queue.append((name, imported_rel))
                break
            # Not in the repository: a well-known type from grpc_tools' include, or protoc's error.
    return staged


def _import_path(root: Path, ip: str) -> tuple[Path, str]:
    rel = _relative(ip, f"import path {ip!r}")
    path = _inside(root, rel, f"import path {_clip(ip)!r}") if rel != "." else root
    return path, rel


def _relative(name: str, what: str) -> str:
    """A repository-relative POSIX path, or Refused: nothing absolute, nothing climbing with `..`."""
    if "\\" in name or "\0" in name:
        raise Refused(f"{_clip(what)}: not a valid path")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise Refused(f"{_clip(what)} escapes the repository: refused")
    return str(pure) if pure.parts else "."


def _inside(root: Path, rel: str, what: str) -> Path:
    """`root/rel` with symlinks followed, or Refused when that leaves the checkout."""
    try:
        real = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused(f"{_clip(what)}: not found or a symlink loop") from None
    if not real.is_relative_to(root):
        raise Refused(f"{_clip(what)} leads out of the checkout (a symlink): refused")
    return real


def _expand(root: Path, patterns: Sequence[str]) -> Iterator[str]:
    """Repository paths matching the configured patterns (`**` spans directories), in a stable order;
    the walk does not follow directory symlinks and stops after MAX_WALK_ENTRIES entries."""
    for pattern in patterns:
        rel = _relative(pattern, f"pattern {pattern!r}")
        if not _GLOB_CHARS.search(rel):
            yield rel
            continue
        parts = PurePosixPath(rel).parts
        fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
        prefix = PurePosixPath(*parts[:fixed]) if fixed else PurePosixPath(".")
        regex = _glob_regex(rel)
        start = root / prefix
        if not start.is_dir():
            continue
        seen = 0
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
            seen += len(dirnames) + len(filenames)
            if seen > limits.MAX_WALK_ENTRIES:
                raise Refused(f"pattern {pattern!r} walks over {limits.MAX_WALK_ENTRIES:,} entries: refused")
            dirnames.sort()
            base = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
            found.extend(
                str(base / name) if str(base) != "." else name
                for name in filenames
                if regex.fullmatch(str(base / name) if str(base) != "." else name)
            )
            if len(found) > limits.MAX_FILES:
                raise Refused(f"pattern {pattern!r} matches over {limits.MAX_FILES} files: refused")
        yield from sorted(found)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`**/` any directories (or none), `*` and `?` within one path component."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _virtual_name(rel: str, roots: Sequence[tuple[Path, str]]) -> str:
    for _, ip_rel in roots:
        if ip_rel == ".":
            return rel
        if rel.startswith(ip_rel + "/"):
            return rel[len(ip_rel) + 1 :]
    listed = ", ".join(ip for _, ip in roots)
    raise Refused(f"{_clip(rel)}: not under any import path ({_clip(listed)})")


def _read(root: Path, rel: str) -> bytes:
    real = _inside(root, rel, rel)
    if not real.is_file():
        raise Refused(f"{_clip(rel)}: not a regular file")
    with real.open("rb") as handle:
        data = handle.read(limits.MAX_FILE_BYTES + 1)
    if len(data) > limits.MAX_FILE_BYTES:
        raise Refused(f"{_clip(rel)}: over {limits.MAX_FILE_BYTES:,} bytes: refused")
    return data


def _decode(data: bytes, rel: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"{_clip(rel)}: not UTF-8 (byte {exc.start})") from None


def _without_comments(text: str) -> str:
    """Comments blanked (newlines kept, so offsets still give line numbers); strings kept."""

    def blank(match: re.Match[str]) -> str:
        token = match.group()
        return re.sub(r"[^\n]", " ", token) if token.startswith("/") else token

    return _COMMENT_OR_STRING.sub(blank, text)


def _imports(text: str) -> Iterator[tuple[int, str]]:
    """(line, imported name) of each import statement; lines are counted as the scan moves on, so a file
    of many imports stays linear."""
    code = _without_comments(text)
    line, offset = 1, 0
    for match in _IMPORT.finditer(code):
        line += code.count("\n", offset, match.start())
        offset = match.start()
        yield line, match.group(1) if match.group(1) is not None else (match.group(2) or "")


def _check_import(name: str, rel: str, line: int) -> None:
    where = f'{rel}:{line}: import "{_clip(name)}"'
    if "\\" in name or "\0" in name:
        raise Refused(f"{_clip(where)}: escape sequences in import paths are refused")
    pure = PurePosixPath(name)
    if name.startswith("/") or pure.is_absolute() or ".." in pure.parts:
        raise Refused(f"{_clip(where)} escapes the repository: refused")
    if not name or "//" in name or "." in pure.parts or str(pure) != name:
        raise Refused(f"{_clip(where)}: not a valid import path")


def _check_nesting(text: str, rel: str) -> None:
    code = _STRING.sub('""', _without_comments(text))
    depth = 0
    for match in _BRACE.finditer(code):
        depth += 1 if match.group() == "{" else -1
        if depth > limits.MAX_NESTING:
            line = code.count("\n", 0, match.start()) + 1
            raise Refused(f"{_clip(rel)}:{line}: nested over {limits.MAX_NESTING} levels deep: refused")


def _clip(text: str) -> str:
    return text if len(text) <= limits.MAX_TEXT else text[: limits.MAX_TEXT - 1] + "…"

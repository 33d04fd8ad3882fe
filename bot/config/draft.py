"""Drafting a `.loopgate.yml` from what a repository already declares (`loopgate init`).

Pure: file contents in, YAML text out; the command reads the files. Sources, most specific first:

- a `Procfile` (`web: gunicorn app:app --bind :$PORT`): one service per process but `release`;
- `docker-compose.yml` / `compose.yaml` services with a `build:` context: their command (or the
  Dockerfile's `CMD`), `environment:` (a neighbour's `http://name:port` becomes
  `${LOOPGATE_<NAME>_URL}`, `${VAR}` is passed from your shell), `depends_on:` as `after:`;
- per directory, a `package.json` with a `start` script, or a `pyproject.toml` whose dependencies or
  files say how it starts (Django, FastAPI/Starlette, Flask, a script, a `__main__`).

What a file cannot say — the health check, how the port is given, data, start order, suites — is
left as a `# TODO:` comment beside a value that loads, so the draft as printed passes `read_config`
and `loopgate config check` while it asks the questions a human must answer.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml

from bot.config import environ

PROCFILES = ("Procfile",)
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml")
PER_DIRECTORY = ("package.json", "pyproject.toml")
UNKNOWN_RUN = "false # TODO: the command that starts it, listening on {port}"
_PORT_VAR = re.compile(r"\$\{PORT\}|\$PORT\b")
_NEIGHBOUR = re.compile(r"^(?:https?://)([a-z0-9][a-z0-9_-]*):\d+(/.*)?$")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?-][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Candidate:
    """One service as far as the repository's files say."""

    name: str
    cwd: str
    source: str
    run: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pass_env: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    todos: list[str] = field(default_factory=list)


@dataclass
class Draft:
    services: list[Candidate]
    skipped: list[str]
    """What was looked at and not drafted, and why (printed as comments)."""

    @property
    def text(self) -> str:
        return render(self)


def draft(files: Mapping[str, str]) -> Draft:
    """A draft from `files` (path relative to the repository root, with `/`, → text)."""
    found: list[Candidate] = []
    skipped: list[str] = []
    for path in sorted(files):
        if PurePosixPath(path).name in PROCFILES:
            found += _procfile(path, files[path])
    for path in sorted(files):
        if path in COMPOSE_FILES:
            found += _compose(path, files[path], files, skipped)
    by_cwd = {candidate.cwd: candidate for candidate in found}
    nested = [p for p in sorted(files) if PurePosixPath(p).name in PER_DIRECTORY and "/" in p]
    roots = [p for p in sorted(files) if p in PER_DIRECTORY] if not nested and not found else []
    for path in nested + roots:
        candidate = _per_directory(path, files, skipped)
        if candidate is None:
            continue
        known = by_cwd.get(candidate.cwd)
        if known is None:
            found.append(candidate)
            by_cwd[candidate.cwd] = candidate
        elif known.run is None:
            known.run, known.source = candidate.run, f"{known.source}; run from {candidate.source}"
            known.env = {**candidate.env, **known.env}
            known.todos += candidate.todos
    return Draft(_unique(found), skipped)


def render(result: Draft) -> str:
    lines = [
        "# Drafted by `loopgate init` from the files named beside each service. Resolve every TODO, then",
        "# run `loopgate config check` (docs/config.md has every key).",
        "version: 1",
        "services:",
    ]
    for service in result.services:
        lines += _service_yaml(service)
    lines += [
        "verify:",
        "  suites: []",
        "  # TODO: the integration suites that prove a change, run against the sandbox's services, e.g.",
        "  # - name: e2e",
        '  #   run: "python -m pytest e2e -q"',
        "  #   env:",
        '  #     ENTRY_URL: "${LOOPGATE_<SERVICE>_URL}"',
        '  #     PYTEST_ADDOPTS: "--junitxml=${LOOPGATE_JUNIT_XML}"',
        '  #   paths: ["e2e/**"]',
    ]
    lines += [f"# not drafted: {why}" for why in result.skipped]
    return "\n".join(lines) + "\n"


def _service_yaml(service: Candidate) -> list[str]:
    paths = '["**"]' if service.cwd == "." else _q(f"{service.cwd}/**").join("[]")
    lines = [
        f"  {service.name}:  # from {service.source}",
        f"    paths: {paths}",
        "    local:",
        f"      run: {_q(service.run or UNKNOWN_RUN)}",
    ]
    if service.run is None:
        lines.append("      # TODO: the command that starts it (nothing declared one)")
    lines.append(f"      cwd: {_q(service.cwd)}")
    lines.append(
        "      # TODO: health: `{path: /healthz}` if it has a route that answers once ready; tcp waits"
    )
    lines.append("      #       only for the port to accept connections.")
    lines.append("      health: {tcp: true}")
    lines += [f"      # TODO: {todo}" for todo in service.todos]
    if service.env:
        lines.append("      env:")
        lines += [f"        {name}: {_q(value)}" for name, value in service.env.items()]
    else:
        lines.append(
            "      # TODO: env: the variables it needs ({port}, ${LOOPGATE_<SERVICE>_URL} for a neighbour)"
        )
    if service.pass_env:
        lines.append(f"      pass_env: [{', '.join(_q(p) for p in service.pass_env)}]")
    else:
        lines.append("      # TODO: pass_env: [OTEL_*] for variables to pass from the shell loopgate runs in")
    if service.after:
        lines.append(f"      after: [{', '.join(service.after)}]")
    else:
        lines.append(
            "      # TODO: after: [services it needs at start]; without, the baseline starts all at once"
        )
    lines.append("    # TODO: state: {sqlite: FILE} or {postgres: {database: NAME}} if it keeps data")
    return lines


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(value)


def service_name(raw: str) -> str:
    """A DNS-1123 label from a process, compose service or directory name."""
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:40].strip("-")
    return name or "service"


def _unique(found: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    for candidate in found:
        base, n = candidate.name, 2
        while candidate.name in seen:
            candidate.name, n = f"{base[:37]}-{n}", n + 1
        seen.add(candidate.name)
    return found


def _with_port(candidate: Candidate, command: str, ports: list[str]) -> None:
    """Put `{port}` where the command takes its port, or in PORT when it says nothing of it."""
    if _PORT_VAR.search(command):
        candidate.run = _PORT_VAR.sub("{port}", command)
        return
    for port in ports:
        replaced = re.sub(rf"(?<=[\s:=]){re.escape(port)}\b", "{port}", command)
        if replaced != command:
            candidate.run = replaced
            candidate.todos.append(f"check the port: {port} in the command became {{port}}")
            return
    candidate.run = command
    candidate.env.setdefault("PORT", "{port}")
    candidate.todos.append(
        "does it read its port from PORT? If not, put {port} in run where it takes the port"
    )


def _procfile(path: str, text: str) -> list[Candidate]:
    cwd = str(PurePosixPath(path).parent)
    out = []
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line.strip())
        if match is None or match.group(1) == "release":
            continue
        name, command = match.groups()
        candidate = Candidate(service_name(name), cwd, f"{path} ({name})")
        _with_port(candidate, command.strip(), [])
        if name != "web":
            candidate.todos.append(
                "does this process listen on a port? loopgate forks servers; if not, remove it"
            )
        out.append(candidate)
    return out


def _compose(path: str, text: str, files: Mapping[str, str], skipped: list[str]) -> list[Candidate]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        skipped.append(f"{path}: not valid YAML ({type(exc).__name__})")
        return []
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        return []
    names = {raw: service_name(str(raw)) for raw in services}
    out = []
    for raw, spec in services.items():
        if not isinstance(spec, dict) or "build" not in spec:
            skipped.append(f"{path} service {raw}: no build context (an image loopgate does not fork)")
            continue
        build = spec["build"]
        context = build.get("context", ".") if isinstance(build, dict) else str(build)
        cwd = _normal(context)
        if cwd is None:
            skipped.append(f"{path} service {raw}: build context {context!r} is outside the repository")
            continue
        candidate = Candidate(names[raw], cwd, f"{path} ({raw})")
        ports = _container_ports(spec.get("ports"), spec.get("expose"))
        command = spec.get("command") or _dockerfile_cmd(files.get(_join(cwd, "Dockerfile")))
        if isinstance(command, list):
            command = shlex.join(str(part) for part in command)
        if command:
            _with_port(candidate, str(command), ports)
        _environment(candidate, spec.get("environment"), names)
        depends = spec.get("depends_on") or []
        candidate.after = [names[d] for d in depends if d in names and "build" in (services.get(d) or {})]
        out.append(candidate)
    return out


def _environment(candidate: Candidate, raw: Any, names: Mapping[str, str]) -> None:
    """Compose `environment:` as `env:` and `pass_env:`, with neighbours' URLs loopgate's."""
    if isinstance(raw, list):
        pairs = [str(item).partition("=") for item in raw]
        items = {key: (value if sep else None) for key, sep, value in pairs}
    elif isinstance(raw, dict):
        items = {str(k): None if v is None else str(v) for k, v in raw.items()}
    else:
        return
    for key, value in items.items():
        if not environ.NAME.fullmatch(key) or key.startswith(environ.OWN_PREFIX) or key in environ.OWN:
            candidate.todos.append(f"{key} from compose is not drafted: loopgate sets or refuses that name")
            continue
        if value is None:  # `- NAME`: compose passes it from the shell
            _pass(candidate, key)
            continue
        neighbour = _NEIGHBOUR.match(value)
        if neighbour and neighbour.group(1) in names:
            url = environ.url_var(names[neighbour.group(1)])
            candidate.env[key] = "${" + url + "}" + (neighbour.group(2) or "")
            continue
        template = ""
        position = 0
        for match in _INTERPOLATION.finditer(value):
            variable = match.group(1) or match.group(2)
            template += value[position : match.start()].replace("$", "$$")
            template += "${" + variable + "}" if _pass(candidate, variable) else ""
            position = match.end()
        template += value[position:].replace("$", "$$")
        if template or not value:  # not a value that was only a variable loopgate never passes
            candidate.env[key] = template


def _pass(candidate: Candidate, name: str) -> bool:
    if environ.refused_by(name) is not None or name in environ.OWN:
        candidate.todos.append(f"{name} is never passed (loopgate's settings and secrets stay its own)")
        return False
    if name not in candidate.pass_env:
        candidate.pass_env.append(name)
    return True


def _container_ports(ports: Any, expose: Any) -> list[str]:
    out = []
    for entry in [*(ports or []), *(expose or [])]:
        text = str(entry.get("target", "")) if isinstance(entry, dict) else str(entry)
        container = text.split("/")[0].rsplit(":", 1)[-1]
        if container.isdigit():
            out.append(container)
    return out


def _dockerfile_cmd(text: str | None) -> str | None:
    """The last `CMD` of a Dockerfile, exec or shell form."""
    if text is None:
        return None
    command = None
    for line in text.splitlines():
        match = re.match(r"^\s*CMD\s+(.+)$", line, re.IGNORECASE)
        if match:
            command = match.group(1).strip()
    if command is None:
        return None
    if command.startswith("["):
        try:
            return shlex.join(str(part) for part in json.loads(command))
        except ValueError:
            return None
    return command


def _per_directory(path: str, files: Mapping[str, str], skipped: list[str]) -> Candidate | None:
    directory = str(PurePosixPath(path).parent)
    name = service_name(PurePosixPath(directory).name if directory != "." else "app")
    candidate = Candidate(name, directory, path)
    if path.endswith("package.json"):
        return _package_json(candidate, files[path], skipped)
    return _pyproject(candidate, files, skipped)


def _package_json(candidate: Candidate, text: str, skipped: list[str]) -> Candidate | None:
    try:
        package = json.loads(text)
        start = package.get("scripts", {}).get("start")
    except (ValueError, AttributeError):
        skipped.append(f"{candidate.source}: not valid JSON")
        return None
    if not isinstance(start, str) or not start.strip():
        skipped.append(f"{candidate.source}: no `start` script")
        return None
    # `node x.js` directly: no npm process between loopgate and the server; anything else through npm,
    # which puts node_modules/.bin on PATH.
    command = start.strip() if re.match(r"^node\s", start.strip()) else "npm start"
    candidate.source = f"{candidate.source} (scripts.start: {start.strip()})"
    _with_port(candidate, command, re.findall(r"(?:--port[= ]|-p )(\d+)", start))
    if package.get("dependencies") or package.get("devDependencies"):
        candidate.todos.append('build: "npm ci" if node_modules is not in the repository')
    return candidate


_MODULE_APP = {
    "fastapi": re.compile(r"^(\w+)\s*=\s*(?:fastapi\.)?FastAPI\(", re.MULTILINE),
    "starlette": re.compile(r"^(\w+)\s*=\s*(?:starlette\.applications\.)?Starlette\(", re.MULTILINE),
    "flask": re.compile(r"^(\w+)\s*=\s*(?:flask\.)?Flask\(", re.MULTILINE),
}


def _pyproject(candidate: Candidate, files: Mapping[str, str], skipped: list[str]) -> Candidate | None:
    try:
        project = tomllib.loads(files[candidate.source])
    except tomllib.TOMLDecodeError:
        skipped.append(f"{candidate.source}: not valid TOML")
        return None
    deps = _dependencies(project)
    modules = {
        PurePosixPath(p).stem: text
        for p, text in sorted(files.items())
        if p.endswith(".py") and str(PurePosixPath(p).parent) == candidate.cwd
    }
    label = candidate.source
    if "django" in deps or "manage" in modules:
        candidate.run = "python manage.py runserver 127.0.0.1:{port} --noreload"
        candidate.source = f"{label} (Django)"
        return candidate
    for framework in ("fastapi", "starlette"):
        if framework in deps or (framework == "starlette" and "uvicorn" in deps):
            module, variable = _find_app(modules, _MODULE_APP[framework]) or ("app", "app")
            candidate.run = f"python -m uvicorn {module}:{variable} --host 127.0.0.1 --port {{port}}"
            candidate.source = f"{label} ({framework})"
            if module not in modules:
                candidate.todos.append(f"which module holds the {framework} app? `app:app` is a guess")
            return candidate
    if "flask" in deps:
        module, _ = _find_app(modules, _MODULE_APP["flask"]) or ("app", "app")
        candidate.run = f"python -m flask --app {module} run --host 127.0.0.1 --port {{port}}"
        candidate.source = f"{label} (Flask)"
        return candidate
    scripts = project.get("project", {}).get("scripts") or {}
    if scripts:
        script = sorted(scripts)[0]
        _with_port(candidate, script, [])
        candidate.source = f"{label} (project.scripts: {script})"
        candidate.todos.append('build: "pip install -e ." if the script is not installed where it runs')
        return candidate
    mains = [m for m, text in modules.items() if re.search(r"__name__\s*==\s*['\"]__main__['\"]", text)]
    if mains:
        preferred = [m for m in ("main", "app", "server", PurePosixPath(candidate.cwd).name) if m in mains]
        module = (preferred or mains)[0]
        _with_port(candidate, f"python {module}.py", [])
        candidate.source = f"{label} ({module}.py runs as a script)"
        return candidate
    skipped.append(f"{label}: nothing says how it starts (no web framework, script or __main__)")
    return None


def _dependencies(project: dict[str, Any]) -> set[str]:
    raw = list(project.get("project", {}).get("dependencies") or [])
    raw += list((project.get("tool", {}).get("poetry", {}).get("dependencies") or {}).keys())
    names = set()
    for item in raw:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)", str(item))
        if match:
            names.add(match.group(1).lower().replace("_", "-"))
    return names


def _find_app(modules: Mapping[str, str], pattern: re.Pattern[str]) -> tuple[str, str] | None:
    for module, text in modules.items():
        match = pattern.search(text)
        if match:
            return module, match.group(1)
    return None


def _normal(path: str) -> str | None:
    parts = [p for p in PurePosixPath(path).parts if p not in (".", "")]
    if path.startswith("/") or ".." in parts:
        return None
    return "/".join(parts) or "."


def _join(cwd: str, name: str) -> str:
    return name if cwd == "." else f"{cwd}/{name}"

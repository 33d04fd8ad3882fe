"""GitHub webhook deliveries built from the published examples (octokit/webhooks).

payload = adapt(load_payload("pull_request", "synchronize"), repo_full_name="acme/shop", ...)
validate_payload("pull_request", "synchronize", payload)
deliver(app_url + "/webhook", "pull_request", payload, secret)

The examples come from the npm package @octokit/webhooks-examples and the JSON Schemas from
@octokit/webhooks-schemas, both pinned in tests/contracts/ (see `contract.contracts_dir`).
"""

from __future__ import annotations

import atexit
import copy
import functools
import hashlib
import hmac
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.github_fake.contract import CONTRACTS_HOME, package_dir
from tests.github_fake.state import node_id

ZERO_SHA = "0" * 40
# Events whose schema is `<event>/event.schema.json` (they carry no `action`).
EVENTS_WITHOUT_ACTION = {"push", "ping", "create", "delete"}


EXAMPLES_PACKAGE = "@octokit/webhooks-examples"
SCHEMAS_PACKAGE = "@octokit/webhooks-schemas"
# The package ships each event's examples as one unnamed list; this file names the ones the tests use.
EXAMPLE_NAMES = CONTRACTS_HOME / "webhook-examples.json"
SCHEMAS_URI = "urn:octokit-webhooks-schemas"


def _digest(example: Any) -> str:
    canonical = json.dumps(example, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@functools.cache
def examples_dir() -> Path:
    """A folder `<event>/<name>` of the named examples, written once per process from the package's
    `api.github.com/index.json`; each is found by the sha256 that `webhook-examples.json` gives its name."""
    index = package_dir(EXAMPLES_PACKAGE) / "api.github.com" / "index.json"
    by_event = {e["name"]: e["examples"] for e in json.loads(index.read_text(encoding="utf-8"))}
    names: dict[str, dict[str, str]] = json.loads(EXAMPLE_NAMES.read_text(encoding="utf-8"))["examples"]
    root = Path(tempfile.mkdtemp(prefix="loopgate-webhook-examples-"))
    atexit.register(shutil.rmtree, root, True)
    for event, named in names.items():
        found = {_digest(example): example for example in by_event.get(event, [])}
        (root / event).mkdir()
        for name, digest in named.items():
            if digest not in found:
                raise LookupError(
                    f"{index} has no {event} example {name} (sha256 {digest}): update {EXAMPLE_NAMES}"
                )
            (root / event / name).write_text(json.dumps(found[digest], indent=2) + "\n", encoding="utf-8")
    return root


def schemas_path() -> Path:
    """The package's one bundled schema: `definitions` keyed `<event>$<action>` (`push$event`, ...)."""
    return package_dir(SCHEMAS_PACKAGE) / "schema.json"


def payload_files(event: str | None = None) -> list[tuple[str, Path]]:
    """Every named example as (event, path), sorted; only `event`'s when given."""
    root = examples_dir()
    events = [event] if event else sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(e, p) for e in events for p in sorted((root / e).glob("*.json"))]


def load_payload(event: str, name: str = "payload") -> dict[str, Any]:
    """A published example: `name` is the file name with or without `.payload.json` / `.json`
    (`load_payload("pull_request", "synchronize")`, `load_payload("push", "with-new-branch")`)."""
    folder = examples_dir() / event
    for candidate in (name, f"{name}.payload.json", f"{name}.json"):
        path = folder / candidate
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
    known = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
    raise FileNotFoundError(f"no webhook example {event}/{name}; there are {known}")


@functools.cache
def _schemas() -> dict[str, Any]:
    contents: dict[str, Any] = json.loads(schemas_path().read_text(encoding="utf-8"))
    return contents


@functools.cache
def _registry() -> Registry[Any]:
    registry: Registry[Any] = Registry()
    return registry.with_resource(
        SCHEMAS_URI, Resource.from_contents(_schemas(), default_specification=DRAFT7)
    )


def schema_id(event: str, action: str | None) -> str:
    if event in EVENTS_WITHOUT_ACTION or not action:
        return f"{event}$event"
    return f"{event}${action}"


@functools.cache
def _validator(event: str, action: str | None) -> Draft7Validator:
    sid = schema_id(event, action)
    if sid not in _schemas()["definitions"]:
        raise KeyError(f"no webhook schema {sid!r} in {schemas_path()}")
    return Draft7Validator({"$ref": f"{SCHEMAS_URI}#/definitions/{sid}"}, registry=_registry())


def payload_errors(event: str, action: str | None, payload: Mapping[str, Any]) -> list[str]:
    """Problems of a payload against `<event>/<action>.schema.json` (or `<event>/event.schema.json`)."""
    errors: list[ValidationError] = sorted(_validator(event, action).iter_errors(payload), key=str)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors]


def validate_payload(event: str, action: str | None, payload: Mapping[str, Any]) -> None:
    """Raise ValueError when the payload does not match its published schema."""
    errors = payload_errors(event, action, payload)
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors[:20])
        raise ValueError(f"webhook {schema_id(event, action)} payload violates its schema:\n{lines}")


def _walk_strings(node: Any, replace: Any) -> Any:
    if isinstance(node, dict):
        return {k: _walk_strings(v, replace) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_strings(v, replace) for v in node]
    if isinstance(node, str):
        return replace(node)
    return node


def _repos_in(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The repository objects of a payload that describe *the* repository (not forks' users etc.)."""
    if isinstance(payload.get("repository"), dict):
        yield payload["repository"]
    pr = payload.get("pull_request")
    if isinstance(pr, dict):
        for side in ("head", "base"):
            repo = (pr.get(side) or {}).get("repo")
            if isinstance(repo, dict):
                yield repo


def adapt(
    payload: Mapping[str, Any],
    *,
    repo_full_name: str | None = None,
    clone_url: str | None = None,
    default_branch: str | None = None,
    api_url: str | None = None,
    web_url: str | None = None,
    ref: str | None = None,
    before: str | None = None,
    after: str | None = None,
    number: int | None = None,
    head_ref: str | None = None,
    head_sha: str | None = None,
    base_ref: str | None = None,
    base_sha: str | None = None,
    draft: bool | None = None,
    installation_id: int | None = None,
    app_id: int | None = None,
    app_slug: str | None = None,
    check_run_id: int | None = None,
    check_name: str | None = None,
    sender_login: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of an example payload pointed at the test's repository, branch and SHAs.

    - `repo_full_name` renames the repository everywhere (names, owner login, every URL);
      `clone_url` / `default_branch` set those fields; `api_url` / `web_url` replace
      `https://api.github.com` / `https://github.com` in every URL (e.g. with the fake's URL).
    - push: `ref` (`refs/heads/x`), `before`, `after` (`head_commit.id` follows; an all-zero `after` makes
      it a deletion, an all-zero `before` a creation). create/delete: `ref` is the short name.
    - pull_request: `number`, `head_ref`/`head_sha`, `base_ref`/`base_sha`, `draft`; `before`/`after` on
      `synchronize`.
    - check_run / check_suite: `head_sha`, `head_ref` (`head_branch`), `check_run_id`, `check_name`,
      `app_id`/`app_slug` (the App that owns the check).
    - `installation_id` sets (or adds) `installation: {id, node_id}`; `sender_login` renames the sender.
    - `overrides` is deep-merged last, for anything else.
    """
    data: dict[str, Any] = copy.deepcopy(dict(payload))

    if repo_full_name:
        old = _old_full_name(data)
        if old and old != repo_full_name:
            old_owner, new_owner = old.split("/")[0], repo_full_name.split("/")[0]
            data = _walk_strings(
                data,
                lambda s: s.replace(f"/{old}", f"/{repo_full_name}").replace(
                    f":{old}.git", f":{repo_full_name}.git"
                ),
            )
            for repo in _repos_in(data):
                repo["full_name"] = repo_full_name
                repo["name"] = repo_full_name.split("/", 1)[1]
                owner = repo.get("owner")
                if isinstance(owner, dict) and owner.get("login") == old_owner:
                    _rename_user(owner, old_owner, new_owner)
            for key in ("repositories", "repositories_added", "repositories_removed"):
                for item in data.get(key) or []:
                    if isinstance(item, dict) and item.get("full_name") == old:
                        item["full_name"] = repo_full_name
                        item["name"] = repo_full_name.split("/", 1)[1]
            pr = data.get("pull_request")
            if isinstance(pr, dict):
                for side in ("head", "base"):
                    part = pr.get(side) or {}
                    if isinstance(part.get("label"), str) and part["label"].startswith(f"{old_owner}:"):
                        part["label"] = f"{new_owner}:{part['label'].split(':', 1)[1]}"
                    if isinstance(part.get("user"), dict) and part["user"].get("login") == old_owner:
                        _rename_user(part["user"], old_owner, new_owner)
    if api_url:
        data = _walk_strings(data, lambda s: s.replace("https://api.github.com", api_url.rstrip("/")))
    if web_url:
        base = web_url.rstrip("/")
        data = _walk_strings(
            data, lambda s: s.replace("https://github.com", base).replace("http://github.com", base)
        )
    for repo in _repos_in(data):
        if clone_url:
            repo["clone_url"] = clone_url
        if default_branch:
            repo["default_branch"] = default_branch
            if "master_branch" in repo:
                repo["master_branch"] = default_branch
    if default_branch and "master_branch" in data:
        data["master_branch"] = default_branch

    _adapt_push_like(data, ref=ref, before=before, after=after)
    _adapt_pull(data, number, head_ref, head_sha, base_ref, base_sha, draft)
    if "pull_request" in data:  # synchronize carries the push's before/after
        for key, value in (("before", before), ("after", after)):
            if value is not None and key in data:
                data[key] = value
    _adapt_checks(data, head_ref, head_sha, check_run_id, check_name, app_id, app_slug, before, after)

    if installation_id is not None:
        inst = data.get("installation")
        if isinstance(inst, dict) and "account" in inst:  # installation events carry the full object
            inst["id"] = installation_id
        elif "zen" in data:  # ping's schema has no `installation`
            pass
        else:
            data["installation"] = {
                "id": installation_id,
                "node_id": node_id("Installation", installation_id),
            }
    if sender_login and isinstance(data.get("sender"), dict):
        _rename_user(data["sender"], data["sender"].get("login", ""), sender_login)
    if overrides:
        data = _deep_merge(data, overrides)
    return data


def _old_full_name(data: dict[str, Any]) -> str | None:
    repo = data.get("repository")
    if isinstance(repo, dict) and isinstance(repo.get("full_name"), str):
        return str(repo["full_name"])
    for key in ("repositories", "repositories_added", "repositories_removed"):
        for item in data.get(key) or []:
            if isinstance(item, dict) and item.get("full_name"):
                return str(item["full_name"])
    return None


def _rename_user(user: dict[str, Any], old: str, new: str) -> None:
    for key, value in list(user.items()):
        if isinstance(value, str) and old:
            user[key] = value.replace(f"/{old}", f"/{new}")
    user["login"] = new
    if "name" in user:
        user["name"] = new


def _adapt_push_like(data: dict[str, Any], *, ref: str | None, before: str | None, after: str | None) -> None:
    is_push = "pusher" in data and "commits" in data
    is_ref_event = "ref_type" in data
    if ref is not None and (is_push or is_ref_event):
        data["ref"] = ref
    if not is_push:
        return
    if before is not None:
        data["before"] = before
        data["created"] = before == ZERO_SHA
    if after is not None:
        data["after"] = after
        data["deleted"] = after == ZERO_SHA
        if after == ZERO_SHA:
            data["head_commit"] = None
            data["commits"] = []
        else:
            if isinstance(data.get("head_commit"), dict):
                data["head_commit"]["id"] = after
            if data.get("commits"):
                data["commits"][-1]["id"] = after
    if isinstance(data.get("compare"), str) and (before or after):
        prefix = data["compare"].split("/compare/")[0]
        data["compare"] = f"{prefix}/compare/{data['before'][:12]}...{data['after'][:12]}"


def _adapt_pull(
    data: dict[str, Any],
    number: int | None,
    head_ref: str | None,
    head_sha: str | None,
    base_ref: str | None,
    base_sha: str | None,
    draft: bool | None,
) -> None:
    pr = data.get("pull_request")
    if not isinstance(pr, dict) or "head" not in pr:
        return
    if number is not None:
        old = pr.get("number")
        data["number"] = number
        pr["number"] = number
        if old is not None:
            data["pull_request"] = pr = _walk_strings(
                pr,
                lambda s: (
                    s.replace(f"/pulls/{old}", f"/pulls/{number}")
                    .replace(f"/issues/{old}", f"/issues/{number}")
                    .replace(f"/pull/{old}", f"/pull/{number}")
                ),
            )
    for side, ref, sha in (("head", head_ref, head_sha), ("base", base_ref, base_sha)):
        part = pr[side]
        if ref is not None:
            part["ref"] = ref
            owner = str(part.get("label", ":")).split(":")[0]
            part["label"] = f"{owner}:{ref}"
        if sha is not None:
            part["sha"] = sha
            if side == "head":
                pr["statuses_url"] = str(pr.get("statuses_url", "")).rsplit("/", 1)[0] + f"/{sha}"
                if "_links" in pr and "statuses" in pr["_links"]:
                    pr["_links"]["statuses"]["href"] = pr["statuses_url"]
    if draft is not None:
        pr["draft"] = draft


def _adapt_checks(
    data: dict[str, Any],
    head_ref: str | None,
    head_sha: str | None,
    check_run_id: int | None,
    check_name: str | None,
    app_id: int | None,
    app_slug: str | None,
    before: str | None,
    after: str | None,
) -> None:
    suites = []
    run = data.get("check_run")
    if isinstance(run, dict):
        if head_sha is not None:
            run["head_sha"] = head_sha
        if check_run_id is not None:
            run["id"] = check_run_id
        if check_name is not None:
            run["name"] = check_name
        if isinstance(run.get("app"), dict):
            _adapt_app(run["app"], app_id, app_slug)
        if isinstance(run.get("check_suite"), dict):
            suites.append(run["check_suite"])
    if isinstance(data.get("check_suite"), dict):
        suites.append(data["check_suite"])
    for suite in suites:
        if head_sha is not None:
            suite["head_sha"] = head_sha
            if "after" in suite:
                suite["after"] = head_sha
        if after is not None and "after" in suite:
            suite["after"] = after
        if before is not None and "before" in suite:
            suite["before"] = before
        if head_ref is not None and "head_branch" in suite:
            suite["head_branch"] = head_ref
        if isinstance(suite.get("app"), dict):
            _adapt_app(suite["app"], app_id, app_slug)


def _adapt_app(app: dict[str, Any], app_id: int | None, app_slug: str | None) -> None:
    if app_id is not None:
        app["id"] = app_id
    if app_slug is not None:
        old = app.get("slug")
        app["slug"] = app_slug
        if old:
            for key, value in list(app.items()):
                if isinstance(value, str) and key.endswith("url"):
                    app[key] = value.replace(f"/{old}", f"/{app_slug}")


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def sign(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature-256` value: `sha256=` + HMAC-SHA256 hex of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    return hmac.compare_digest(sign(body, secret), signature)


def headers_for(
    event: str, body: bytes, secret: str | None, delivery_id: str | None = None, hook_id: int = 424242
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/fake",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": str(hook_id),
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": str(hook_id),
    }
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return headers


def deliver(
    url: str,
    event: str,
    payload: Mapping[str, Any],
    secret: str | None,
    delivery_id: str | None = None,
    *,
    validate: bool = True,
    timeout: float = 10.0,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """POST a webhook delivery like GitHub does (validating the payload against its schema first)."""
    if validate:
        validate_payload(event, payload.get("action"), payload)
    body = json.dumps(payload).encode()
    headers = headers_for(event, body, secret, delivery_id)
    if client is not None:
        return client.post(url, content=body, headers=headers, timeout=timeout)
    with httpx.Client() as own:
        return own.post(url, content=body, headers=headers, timeout=timeout)

"""What the fake remembers: repositories (real git repos read at request time), check runs, comments,
pulls, statuses, installations and tokens."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
import secrets
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ZERO_SHA = "0" * 40

# What an installation of the App may do unless a test says otherwise.
DEFAULT_PERMISSIONS: dict[str, str] = {
    "checks": "write",
    "contents": "write",
    "issues": "write",
    "metadata": "read",
    "pull_requests": "write",
    "statuses": "write",
}


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def node_id(kind: str, number: int) -> str:
    """A legacy-style GraphQL global id (`base64("012:PullRequest7")`)."""
    raw = f"0{len(kind)}:{kind}{number}"
    return base64.b64encode(raw.encode()).decode()


class GitError(RuntimeError):
    pass


@dataclass(frozen=True)
class GitPerson:
    name: str
    email: str
    date: str


@dataclass(frozen=True)
class GitCommit:
    sha: str
    tree: str
    parents: tuple[str, ...]
    author: GitPerson
    committer: GitPerson
    message: str


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    kind: str  # blob | tree | commit
    sha: str
    size: int
    path: str


@dataclass(frozen=True)
class FileChange:
    status: str  # added | removed | modified | renamed | copied | changed
    filename: str
    previous_filename: str | None
    additions: int
    deletions: int
    sha: str | None


class Git:
    """Read-only access to a real git repository through the `git` command."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _run(self, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
        done = subprocess.run(["git", *args], cwd=self.path, capture_output=True, env=env)
        if done.returncode not in ok:
            raise GitError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
        return done

    def text(self, *args: str) -> str:
        return self._run(*args).stdout.decode(errors="replace").strip()

    def resolve(self, ref: str) -> str | None:
        """A commit SHA for a SHA, branch, tag, `heads/<b>`, `tags/<t>` or `refs/...`; None if unknown."""
        candidates = [ref]
        if ref.startswith(("heads/", "tags/")):
            candidates.insert(0, f"refs/{ref}")
        for candidate in candidates:
            if candidate.startswith("-"):
                return None
            done = self._run("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", ok=(0, 1, 128))
            if done.returncode == 0:
                return done.stdout.decode().strip()
        return None

    def branch_sha(self, branch: str) -> str | None:
        done = self._run(
            "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", ok=(0, 1, 128)
        )
        return done.stdout.decode().strip() if done.returncode == 0 else None

    def branches(self) -> dict[str, str]:
        out = self.text("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads")
        pairs = (line.split(" ", 1) for line in out.splitlines() if line)
        return {name: sha for name, sha in pairs}

    def head_branch(self) -> str | None:
        done = self._run("symbolic-ref", "--quiet", "--short", "HEAD", ok=(0, 1, 128))
        if done.returncode != 0:
            return None
        return done.stdout.decode().strip() or None

    def commit(self, sha: str) -> GitCommit:
        fmt = "%H%x00%T%x00%P%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B"
        out = self._run("show", "-s", f"--format={fmt}", sha).stdout.decode(errors="replace")
        parts = out.split("\x00", 9)
        if len(parts) != 10:
            raise GitError(f"cannot read commit {sha}")
        return GitCommit(
            sha=parts[0],
            tree=parts[1],
            parents=tuple(parts[2].split()),
            author=GitPerson(parts[3], parts[4], iso(parse_iso(parts[5])) or ""),
            committer=GitPerson(parts[6], parts[7], iso(parse_iso(parts[8])) or ""),
            message=parts[9].rstrip("\n"),
        )

    def entry(self, ref: str, path: str) -> TreeEntry | None:
        """The tree entry at `path` (no leading slash) in commit `ref`."""
        path = path.strip("/")
        if not path:
            tree = self.text("rev-parse", f"{ref}^{{tree}}")
            return TreeEntry("040000", "tree", tree, 0, "")
        done = self._run("ls-tree", "-l", "-z", ref, "--", path, ok=(0, 128))
        for record in done.stdout.decode(errors="replace").split("\x00"):
            if not record:
                continue
            meta, name = record.split("\t", 1)
            mode, kind, sha, size = meta.split()
            if name == path:
                return TreeEntry(mode, kind, sha, int(size) if size.isdigit() else 0, name)
        return None

    def list_dir(self, ref: str, path: str) -> list[TreeEntry]:
        path = path.strip("/")
        target = f"{ref}:{path}" if path else f"{ref}^{{tree}}"
        done = self._run("ls-tree", "-l", "-z", target)
        entries = []
        for record in done.stdout.decode(errors="replace").split("\x00"):
            if not record:
                continue
            meta, name = record.split("\t", 1)
            mode, kind, sha, size = meta.split()
            full = f"{path}/{name}" if path else name
            entries.append(TreeEntry(mode, kind, sha, int(size) if size.isdigit() else 0, full))
        return entries

    def show(self, ref: str, path: str) -> bytes:
        """The bytes of a file at a ref (`git show <ref>:<path>`)."""
        return self._run("show", f"{ref}:{path.strip('/')}").stdout

    def blob(self, sha: str) -> bytes:
        return self._run("cat-file", "blob", sha).stdout

    def merge_base(self, a: str, b: str) -> str | None:
        done = self._run("merge-base", a, b, ok=(0, 1))
        return done.stdout.decode().strip() or None

    def rev_list(self, spec: str, limit: int | None = None) -> list[str]:
        args = ["rev-list", "--reverse", spec]
        if limit is not None:
            args.insert(1, f"--max-count={limit}")
        return self.text(*args).split()

    def count(self, spec: str) -> int:
        return int(self.text("rev-list", "--count", spec) or 0)

    def changes(self, a: str | None, b: str) -> list[FileChange]:
        """Files changed from `a` to `b` (from the empty tree when `a` is None)."""
        base = a or self.text("hash-object", "-t", "tree", "/dev/null")
        names = self._run("diff", "--name-status", "-z", "-M", base, b).stdout.decode(errors="replace")
        nums = self._run("diff", "--numstat", "-z", "-M", base, b).stdout.decode(errors="replace")
        counts: dict[str, tuple[int, int]] = {}
        tokens = nums.split("\x00")
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if not token:
                i += 1
                continue
            added, deleted, rest = token.split("\t", 2)
            if rest == "":  # rename: the two names follow
                name = tokens[i + 2]
                i += 3
            else:
                name = rest
                i += 1
            counts[name] = (int(added) if added.isdigit() else 0, int(deleted) if deleted.isdigit() else 0)
        out: list[FileChange] = []
        tokens = names.split("\x00")
        i = 0
        kinds = {"A": "added", "D": "removed", "M": "modified", "R": "renamed", "C": "copied", "T": "changed"}
        while i < len(tokens):
            code = tokens[i]
            if not code:
                i += 1
                continue
            previous = None
            if code[0] in "RC":
                previous, name = tokens[i + 1], tokens[i + 2]
                i += 3
            else:
                name = tokens[i + 1]
                i += 2
            plus, minus = counts.get(name, (0, 0))
            blob = None if code[0] == "D" else self._blob_sha(b, name)
            out.append(FileChange(kinds.get(code[0], "changed"), name, previous, plus, minus, blob))
        return out

    def _blob_sha(self, ref: str, path: str) -> str | None:
        entry = self.entry(ref, path)
        return entry.sha if entry else None


_ids = itertools.count(1_000_001)


def next_id() -> int:
    return next(_ids)


@dataclass
class User:
    login: str
    id: int
    type: str = "User"  # User | Organization | Bot


@dataclass
class CheckRun:
    id: int
    repo: str
    name: str
    head_sha: str
    status: str
    conclusion: str | None
    started_at: str | None
    completed_at: str | None
    details_url: str | None
    external_id: str | None
    output: dict[str, Any]
    actions: list[dict[str, Any]]
    app_id: int
    check_suite_id: int
    annotations: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return node_id("CheckRun", self.id)


@dataclass
class IssueComment:
    id: int
    repo: str
    issue_number: int
    body: str
    user: User
    created_at: str
    updated_at: str
    via_app: bool = False
    history: list[str] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return node_id("IssueComment", self.id)


@dataclass
class Pull:
    number: int
    id: int
    repo: str
    head_ref: str
    head_owner: str
    base_ref: str
    title: str
    body: str | None
    draft: bool
    user: User
    created_at: str
    updated_at: str
    state: str = "open"
    merged: bool = False
    closed_at: str | None = None
    merged_at: str | None = None
    last_head_sha: str | None = None
    last_base_sha: str | None = None
    maintainer_can_modify: bool = False

    @property
    def node_id(self) -> str:
        return node_id("PullRequest", self.id)


@dataclass
class IssueEvent:
    """What GitHub records on an issue or PR's timeline (`convert_to_draft`, `ready_for_review`), with the
    account that caused it; `via_app` when an App's token did."""

    id: int
    repo: str
    issue_number: int
    event: str
    actor: User
    created_at: str
    via_app: bool = False

    @property
    def node_id(self) -> str:
        kind = "".join(part.title() for part in self.event.split("_")) + "Event"
        return node_id(kind, self.id)


@dataclass
class Status:
    id: int
    repo: str
    sha: str
    state: str
    context: str
    description: str | None
    target_url: str | None
    created_at: str
    creator: User


@dataclass
class CommitComment:
    id: int
    repo: str
    commit_id: str
    body: str
    path: str | None
    position: int | None
    line: int | None
    user: User
    created_at: str


@dataclass
class Repo:
    full_name: str
    path: Path
    id: int
    owner: User
    private: bool = False
    default_branch: str | None = None
    """None: the git repo's HEAD branch when the fake first read it. A setting, as on GitHub: a test
    that checks out another branch of the repo to commit there does not change it."""
    clone_url: str | None = None  # None: the path as a file:// URL
    created_at: str = field(default_factory=lambda: iso(now()) or "")
    check_runs: dict[int, CheckRun] = field(default_factory=dict)
    comments: dict[int, IssueComment] = field(default_factory=dict)
    pulls: dict[int, Pull] = field(default_factory=dict)
    statuses: list[Status] = field(default_factory=list)
    events: list[IssueEvent] = field(default_factory=list)
    commit_comments: list[CommitComment] = field(default_factory=list)
    check_suites: dict[str, int] = field(default_factory=dict)
    next_number: int = 1

    @property
    def owner_login(self) -> str:
        return self.full_name.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/", 1)[1]

    @property
    def git(self) -> Git:
        return Git(self.path)

    @property
    def node_id(self) -> str:
        return node_id("Repository", self.id)

    def effective_default_branch(self) -> str:
        if not self.default_branch:
            self.default_branch = self.git.head_branch() or "main"
        return self.default_branch

    def effective_clone_url(self) -> str:
        return self.clone_url or Path(self.path).resolve().as_uri()

    def pull_head_sha(self, pull: Pull) -> str:
        """A pull's head: its branch's tip while the branch exists, else the last one seen."""
        sha = self.git.branch_sha(pull.head_ref) if pull.head_owner == self.owner_login else None
        if sha is None and pull.head_owner != self.owner_login:
            sha = self.git.branch_sha(f"{pull.head_owner}/{pull.head_ref}") or self.git.branch_sha(
                pull.head_ref
            )
        if sha and pull.state == "open":
            pull.last_head_sha = sha
        return sha if (sha and pull.state == "open") else (pull.last_head_sha or sha or ZERO_SHA)

    def pull_base_sha(self, pull: Pull) -> str:
        sha = self.git.branch_sha(pull.base_ref)
        if sha and pull.state == "open":
            pull.last_base_sha = sha
        return sha if (sha and pull.state == "open") else (pull.last_base_sha or sha or ZERO_SHA)


@dataclass
class Installation:
    id: int
    account: User
    repos: list[str]  # lower-cased full names
    permissions: dict[str, str]
    created_at: str
    events: list[str] = field(
        default_factory=lambda: ["check_run", "check_suite", "pull_request", "push", "create", "delete"]
    )


@dataclass
class Token:
    token: str
    installation_id: int
    expires_at: datetime
    permissions: dict[str, str]
    repos: list[str]  # lower-cased full names this token may reach

    @property
    def expired(self) -> bool:
        return self.expires_at <= datetime.now(UTC)


@dataclass
class App:
    id: int
    slug: str
    name: str
    owner: User
    public_key_pem: str
    created_at: str
    permissions: dict[str, str]

    @property
    def bot_login(self) -> str:
        return f"{self.slug}[bot]"

    @property
    def node_id(self) -> str:
        return node_id("Integration", self.id)


class FakeState:
    """Everything the fake knows. One re-entrant lock guards it; the server holds it per request."""

    def __init__(self, app: App) -> None:
        self.lock = threading.RLock()
        self.app = app
        self.bot = User(app.bot_login, 41_000_000 + app.id, "Bot")
        self.repos: dict[str, Repo] = {}
        self.installations: dict[int, Installation] = {}
        self.tokens: dict[str, Token] = {}
        self.users: dict[str, User] = {}
        # Test knobs.
        self.refuse_draft_conversion: str | None = None
        self.token_ttl = timedelta(hours=1)

    def user(self, login: str, kind: str = "User") -> User:
        key = login.lower()
        if key not in self.users:
            self.users[key] = User(login, 5_000_000 + len(self.users) * 7 + 1, kind)
        return self.users[key]

    def add_repo(self, full_name: str, path: Path, *, private: bool = False) -> Repo:
        owner, _, name = full_name.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"repository name {full_name!r} is not OWNER/NAME")
        if not (Path(path) / ".git").exists() and not (Path(path) / "HEAD").exists():
            raise ValueError(f"{path} is not a git repository")
        repo = Repo(
            full_name=full_name, path=Path(path), id=next_id(), owner=self.user(owner), private=private
        )
        repo.effective_default_branch()  # fixed now, as a repository's setting
        self.repos[full_name.lower()] = repo
        inst = next(
            (i for i in self.installations.values() if i.account.login.lower() == owner.lower()), None
        )
        if inst is None:
            inst = Installation(
                id=next_id(),
                account=repo.owner,
                repos=[],
                permissions=dict(self.app.permissions),
                created_at=iso(now()) or "",
            )
            self.installations[inst.id] = inst
        inst.repos.append(full_name.lower())
        return repo

    def repo(self, owner: str, name: str) -> Repo | None:
        return self.repos.get(f"{owner}/{name}".lower())

    def require_repo(self, full_name: str) -> Repo:
        repo = self.repos.get(full_name.lower())
        if repo is None:
            raise KeyError(f"the fake has no repository {full_name!r}; it has {sorted(self.repos)}")
        return repo

    def installation_for(self, full_name: str) -> Installation:
        for inst in self.installations.values():
            if full_name.lower() in inst.repos:
                return inst
        raise KeyError(f"no installation covers {full_name!r}")

    def issue_token(
        self, installation: Installation, permissions: dict[str, str] | None, repos: list[str] | None
    ) -> Token:
        token = Token(
            token="ghs_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "b")[:36],
            installation_id=installation.id,
            expires_at=now() + self.token_ttl,
            permissions=dict(permissions if permissions is not None else installation.permissions),
            repos=list(repos if repos is not None else installation.repos),
        )
        self.tokens[token.token] = token
        return token

    def set_draft(self, repo: Repo, pull: Pull, draft: bool, actor: User, *, via_app: bool) -> None:
        """Make a pull a draft or ready, and record the event GitHub shows for it (none when nothing
        changed)."""
        if pull.draft == draft:
            return
        pull.draft = draft
        stamp = iso(now()) or pull.updated_at
        pull.updated_at = stamp
        event = "convert_to_draft" if draft else "ready_for_review"
        repo.events.append(IssueEvent(next_id(), repo.full_name, pull.number, event, actor, stamp, via_app))

    def find_pull_by_node_id(self, pull_node_id: str) -> tuple[Repo, Pull] | None:
        for repo in self.repos.values():
            for pull in repo.pulls.values():
                if pull.node_id == pull_node_id:
                    return repo, pull
        return None

    def check_suite_id(self, repo: Repo, head_sha: str) -> int:
        if head_sha not in repo.check_suites:
            repo.check_suites[head_sha] = next_id()
        return repo.check_suites[head_sha]

    def snapshot(self) -> dict[str, Any]:
        """The state as plain JSON-able data (for `GET /_fake/state` and debugging)."""
        with self.lock:

            def plain(obj: Any) -> Any:
                if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
                if isinstance(obj, dict):
                    return {str(k): plain(v) for k, v in obj.items()}
                if isinstance(obj, list | tuple):
                    return [plain(v) for v in obj]
                if isinstance(obj, Path):
                    return str(obj)
                if isinstance(obj, datetime):
                    return iso(obj)
                return obj

            repos = {}
            for key, repo in self.repos.items():
                data = plain(repo)
                data["default_branch"] = repo.effective_default_branch()
                data["clone_url"] = repo.effective_clone_url()
                for number, pull in repo.pulls.items():
                    data["pulls"][str(number)]["node_id"] = pull.node_id
                    data["pulls"][str(number)]["head_sha"] = repo.pull_head_sha(pull)
                repos[key] = data
            return {
                "app": {k: v for k, v in plain(self.app).items() if k != "public_key_pem"},
                "repos": repos,
                "installations": plain(self.installations),
                "tokens": len(self.tokens),
                "refuse_draft_conversion": self.refuse_draft_conversion,
            }

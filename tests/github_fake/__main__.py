"""Run the GitHub contract fake in the foreground.

    python -m tests.github_fake --port 8765 --repo acme/shop=/path/to/git/repo \
        [--app-id 424242 --private-key app.pem]

A missing `--private-key` file is generated (and written there); without the flag a key is generated into
a temporary file. One JSON line on stdout tells the URL, App id, key path and installation ids.
`GET /_fake/requests`, `/_fake/violations` and `/_fake/state` show what the fake saw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from tests.github_fake.server import GitHubFake, generate_private_key


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.github_fake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="OWNER/NAME=PATH",
        help="a repository backed by a git repo (repeatable)",
    )
    parser.add_argument("--app-id", type=int, default=424242)
    parser.add_argument("--app-slug", default="loopgate")
    parser.add_argument("--private-key", type=Path, help="PEM file of the App key (generated if missing)")
    parser.add_argument("--violation-status", type=int, default=599)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repos: dict[str, Path] = {}
    for spec in args.repo:
        name, sep, path = spec.partition("=")
        if not sep or "/" not in name:
            print(f"--repo {spec!r}: expected OWNER/NAME=PATH", file=sys.stderr)
            return 2
        repos[name] = Path(path)
    key_path: Path = args.private_key or Path(tempfile.mkdtemp(prefix="github-fake-")) / "app.pem"
    if key_path.exists():
        pem = key_path.read_text()
    else:
        pem = generate_private_key()
        key_path.write_text(pem)
        key_path.chmod(0o600)
    fake = GitHubFake(
        repos,
        app_id=args.app_id,
        app_slug=args.app_slug,
        private_key_pem=pem,
        host=args.host,
        port=args.port,
        violation_status=args.violation_status,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    fake.bind()
    info = {
        "url": fake.url,
        "graphql_url": fake.graphql_url,
        "app_id": fake.app_id,
        "app_slug": fake.app_slug,
        "private_key": str(key_path),
        "installations": {name: fake.installation_id(name) for name in repos},
    }
    print(json.dumps(info), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        fake.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

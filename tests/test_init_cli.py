"""`loopgate init`: a draft from what the repository declares, loadable as printed (TODOs are
comments), written only where no config exists."""

from __future__ import annotations

import shutil
from pathlib import Path

from bot.config.draft import draft
from bot.config.loader import read_config
from tests.conftest import ROOT, run_cli

POLYGLOT = ROOT / "examples" / "polyglot"


def test_the_polyglot_draft_as_printed_loads_and_finds_each_service(tmp_path: Path) -> None:
    repo = tmp_path / "polyglot"
    shutil.copytree(POLYGLOT, repo, ignore=shutil.ignore_patterns(".loopgate.yml", "__pycache__"))
    done = run_cli("init", "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    assert "# TODO:" in done.stdout
    config = read_config(done.stdout, "draft").config
    assert sorted(config.services) == ["front", "greeter", "names"]
    front, greeter, names = (config.services[n].local_spec for n in ("front", "greeter", "names"))
    assert (
        front.run == "python -m uvicorn front_app:app --host 127.0.0.1 --port {port}" and front.cwd == "front"
    )
    assert greeter.run == "python greeter.py" and greeter.env == {"PORT": "{port}"}
    assert names.run == "node server.js" and names.env == {"PORT": "{port}"}
    assert all(s.local_spec.health_check.tcp for s in config.services.values())
    assert config.services["names"].paths == ["names/**"]
    assert not (repo / ".loopgate.yml").exists()  # printed, not written

    written = run_cli("init", "--repo", str(repo), "--write")
    assert written.returncode == 0, written.stderr
    assert (repo / ".loopgate.yml").read_text() == done.stdout
    (repo / ".loopgate.yml").write_text("mine\n")
    again = run_cli("init", "--repo", str(repo), "--write")
    assert again.returncode == 1 and "never overwrites" in again.stderr
    assert (repo / ".loopgate.yml").read_text() == "mine\n"


def test_nothing_to_draft_from_is_said_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "package.json").write_text('{"name": "lib", "scripts": {"test": "jest"}}')
    done = run_cli("init", "--repo", str(tmp_path), "--write")
    assert done.returncode == 1
    assert "found no service to draft from" in done.stderr
    assert "not drafted: lib/package.json: no `start` script" in done.stdout
    assert not (tmp_path / ".loopgate.yml").exists()


COMPOSE = """\
services:
  api:
    build: ./api
    command: ["python", "-m", "uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000"]
    ports: ["8080:8000"]
    environment:
      USERS_URL: http://users:3000/v1
      HONEYCOMB_API_KEY: ${HONEYCOMB_API_KEY}
      DSN: "postgres://app:${DB_PASSWORD:-x}@db/app"
      GITHUB_TOKEN: ${GITHUB_TOKEN}
      PRICE: 5$
    depends_on: [users, db]
  users:
    build: {context: services/users}
    environment: [OTEL_SERVICE_NAME, MODE=fast]
  db:
    image: postgres:16
"""


def test_compose_services_with_a_build_context_become_services() -> None:
    files = {
        "docker-compose.yml": COMPOSE,
        "services/users/Dockerfile": 'FROM node:20\nCMD ["node", "index.js"]\n',
        "services/users/package.json": '{"scripts": {"start": "node index.js"}}',
    }
    result = draft(files)
    config = read_config(result.text, "draft").config
    assert sorted(config.services) == ["api", "users"]
    api, users = config.services["api"].local_spec, config.services["users"].local_spec
    assert api.run == "python -m uvicorn main:app --host 0.0.0.0 --port {port}" and api.cwd == "api"
    assert api.env == {
        "USERS_URL": "${LOOPGATE_USERS_URL}/v1",
        "HONEYCOMB_API_KEY": "${HONEYCOMB_API_KEY}",
        "DSN": "postgres://app:${DB_PASSWORD}@db/app",
        "PRICE": "5$$",
    }
    assert api.pass_env == ["HONEYCOMB_API_KEY", "DB_PASSWORD"]  # never GITHUB_TOKEN
    assert api.after == ["users"]  # db is an image: not a service loopgate forks
    assert "GITHUB_TOKEN is never passed" in result.text
    assert "check the port: 8000 in the command became {port}" in result.text
    assert users.run == "node index.js" and users.cwd == "services/users"
    assert users.env == {"PORT": "{port}", "MODE": "fast"} and users.pass_env == ["OTEL_SERVICE_NAME"]
    assert "# not drafted: docker-compose.yml service db: no build context" in result.text


def test_procfile_and_per_directory_manifests() -> None:
    files = {
        "Procfile": (
            "web: gunicorn app:app --bind 127.0.0.1:$PORT\nworker: celery -A app worker\nrelease: migrate\n"
        ),
        "web/package.json": '{"scripts": {"start": "next start -p 3000"}, "dependencies": {"next": "14"}}',
        "shop/pyproject.toml": '[project]\nname = "shop"\ndependencies = ["Django>=5"]\n',
        "shop/manage.py": "",
        "blog/pyproject.toml": '[project]\nname = "blog"\ndependencies = ["flask"]\n',
        "blog/site.py": "from flask import Flask\nsite = Flask(__name__)\n",
        "tools/pyproject.toml": '[project]\nname = "tools"\n',
        "Web App/package.json": '{"scripts": {"start": "node main.js"}}',
    }
    result = draft(files)
    config = read_config(result.text, "draft").config
    services = {name: s.local_spec for name, s in config.services.items()}
    assert services["web"].run == "gunicorn app:app --bind 127.0.0.1:{port}" and services["web"].cwd == "."
    assert config.services["web"].paths == ["**"]
    assert services["worker"].env == {"PORT": "{port}"}
    assert "release" not in services
    assert services["web-2"].run == "npm start" and services["web-2"].cwd == "web"
    assert services["shop"].run == "python manage.py runserver 127.0.0.1:{port} --noreload"
    assert services["blog"].run == "python -m flask --app site run --host 127.0.0.1 --port {port}"
    assert services["web-app"].run == "node main.js" and services["web-app"].cwd == "Web App"
    assert "# not drafted: tools/pyproject.toml: nothing says how it starts" in result.text
    assert "does this process listen on a port?" in result.text

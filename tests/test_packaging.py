"""The wheel is the product: built from the sources and installed into a fresh venv, it renders every report
and prints the App manifest.

The wheel is built from a copy of what a source distribution holds (pyproject.toml, README.md, app.yml, bot/,
action/, templates/; symlinks kept, as git checks them out), so leftovers of earlier in-tree builds
(`build/lib`) cannot slip files into it. It is installed without dependencies into a new venv; the
dependencies come from this project's venv through a `.pth` line, which puts that site-packages on `sys.path`
but runs none of its `.pth` files: the editable install's finder stays off, and `bot` can only come from the
wheel. The renders run in a subprocess, isolated (`-I`), with its working directory outside the checkout and
no LOOPGATE_* setting.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bot.evidence import Evidence
from bot.report import render_check, render_comment, render_html, render_pr_body, render_step_summary
from bot.report.display import verdict_label
from tests import evidence_samples as samples

ROOT = Path(__file__).resolve().parents[1]
SDIST_PARTS = ("pyproject.toml", "README.md", "app.yml", "bot", "action", "templates")

RENDER = """
import json, sys
from pathlib import Path

import bot
from bot.evidence import Evidence
from bot.report import render_check, render_comment, render_html, render_pr_body, render_step_summary

out = {"bot": bot.__file__, "sys_path": sys.path, "renders": {}}
for name in sys.argv[1:]:
    evidence = Evidence.model_validate_json(Path(name).read_text(encoding="utf-8"))
    check = render_check(evidence)
    out["renders"][name] = {
        "comment": render_comment(evidence),
        "check_title": check.title,
        "check_summary": check.summary,
        "check_text": check.text,
        "html": render_html(evidence),
        "pr_body": render_pr_body(evidence),
        "step_summary": render_step_summary(evidence),
    }
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    site_packages: Path


def _ignore(_directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".egg-info"))}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    source.mkdir()
    for part in SDIST_PARTS:
        origin = ROOT / part
        if origin.is_dir():
            shutil.copytree(origin, source / part, ignore=_ignore, symlinks=True)
        else:
            shutil.copy2(origin, source / part)
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], check=True, timeout=240)
    (wheel,) = dist.glob("loopgate-*.whl")

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)], check=True, timeout=120
    )
    site_packages = Path(
        subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies, not loopgate: this venv's site-packages holds only the editable install's finder,
    # which a `.pth` path line does not activate.
    (site_packages / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return Installed(wheel=wheel, python=python, site_packages=site_packages)


def test_wheel_holds_every_template_module_and_data_file(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    templates = sorted(p.relative_to(ROOT / "templates") for p in (ROOT / "templates").rglob("*.j2"))
    assert templates, "no templates found in the checkout"
    missing = [
        f"bot/templates/{t.as_posix()}" for t in templates if f"bot/templates/{t.as_posix()}" not in names
    ]
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for top in ("bot", "action")
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    )
    missing += [m for m in modules if m not in names]  # a package left out of pyproject's list
    data = ("bot/py.typed", "bot/store/migrations/script.py.mako", "bot/manifest/app.yml")
    missing += [d for d in data if d not in names]
    assert missing == []
    # The manifest ships as the file, not as a link to a file the wheel does not hold.
    manifest = zipfile.ZipFile(installed.wheel).read("bot/manifest/app.yml")
    assert manifest == (ROOT / "app.yml").read_bytes()


def test_installed_loopgate_prints_the_app_manifest_outside_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    """`loopgate app manifest` reads the manifest the wheel ships, not the checkout's `app.yml`."""
    done = run_outside(
        [str(installed.python.parent / "loopgate"), "app", "manifest", "--url", "https://lg.example.com/"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    expected = yaml.safe_load((ROOT / "app.yml").read_text(encoding="utf-8"))
    assert {k: v for k, v in manifest.items() if k not in ("hook_attributes", "redirect_url")} == {
        k: v for k, v in expected.items() if k not in ("hook_attributes", "redirect_url")
    }
    assert manifest["hook_attributes"]["url"] == "https://lg.example.com/webhooks/github"
    assert manifest["redirect_url"] == "https://lg.example.com/"


def run_outside(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run from a folder outside the checkout, with no LOOPGATE_* settings: what a user's shell has."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _readable(markdown: str) -> str:
    """What a reader sees of Markdown source: backslash escapes undone."""
    return re.sub(r"\\(.)", r"\1", markdown)


@pytest.mark.timeout(300)
def test_installed_wheel_renders_every_report_outside_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    evidences = {
        "failing": samples.failing(),
        "passing": samples.passing(),
        "config-error": samples.config_error(),
    }
    files: dict[str, Evidence] = {}
    for name, evidence in evidences.items():
        path = tmp_path / f"{name}.json"
        path.write_text(evidence.model_dump_json(), encoding="utf-8")
        files[str(path)] = evidence
    done = run_outside([str(installed.python), "-I", "-c", RENDER, *files], tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert Path(out["bot"]).is_relative_to(installed.site_packages), out["bot"]
    dependencies = Path(sysconfig.get_paths()["purelib"]).resolve()
    checkout = [p for p in out["sys_path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    assert [Path(p).resolve() for p in checkout] == [dependencies], out["sys_path"]

    for name, evidence in files.items():
        renders: dict[str, str] = out["renders"][name]
        label = verdict_label(evidence)
        assert evidence.reasons
        # The check's text is the details below its summary; the title holds the first reason, clipped.
        for kind in ("comment", "check_summary", "html", "pr_body", "step_summary"):
            seen = html.unescape(renders[kind]) if kind == "html" else _readable(renders[kind])
            assert label in seen, (name, kind)
            for reason in evidence.reasons:
                assert reason in seen, (name, kind, reason)
        title = _readable(renders["check_title"])
        assert label in title and evidence.reasons[0][:40] in title, title
        # The installed templates are the checkout's: the same Evidence renders to the same text.
        check = render_check(evidence)
        assert renders == {
            "comment": render_comment(evidence),
            "check_title": check.title,
            "check_summary": check.summary,
            "check_text": check.text,
            "html": render_html(evidence),
            "pr_body": render_pr_body(evidence),
            "step_summary": render_step_summary(evidence),
        }

"""Sandboxes that follow a working tree: `loopgate sandbox create --worktree`, `update`, `delete`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.config import ConfigError, RuntimeSettings
from bot.runtimes.git import snapshot_worktree
from bot.runtimes.local import LocalRuntime
from tests.conftest import SHOP, make_shop, processes_under, run_cli
from tests.gitrepo import GitRepo

INVENTORY = "services/inventory/inventory_app.py"
ORDERS = "services/orders/orders_app.py"
PAYMENTS = "services/payments/payments_app.py"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[GitRepo]:
    """A shop of its own: its working tree is changed without commits. Its baseline goes at the end."""
    repo = make_shop(tmp_path_factory.mktemp("worktree-shop") / "shop", [])
    yield repo
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    for record, _ in runtime.baselines():
        if Path(record.repo) == repo.path.resolve():
            runtime.down(record.env_id)


def _user_state(repo: GitRepo) -> tuple[str, str, str]:
    """HEAD, `git status` and the index's bytes: what a snapshot must leave as it found them."""
    index = hashlib.sha256((repo.path / ".git" / "index").read_bytes()).hexdigest()
    return repo.git("rev-parse", "HEAD"), repo.git("status", "--porcelain"), index


def _item(env: dict[str, str], key: str) -> dict[str, object]:
    answer = httpx.get(
        f"{env['LOOPGATE_INVENTORY_URL']}/items/sku-red-mug",
        headers={"baggage": f"loopgate-sandbox={key}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def _forks(state_dir: Path, key: str) -> dict[str, int]:
    record = LocalRuntime(RuntimeSettings(state_dir=state_dir)).registry.find_sandbox(key)
    assert record is not None
    return {name: fork.process.pid for name, fork in record.forks.items()}


def test_sandbox_follows_the_working_tree(shop: GitRepo, state_dir: Path) -> None:
    shop.git("apply", str(SHOP / "changes" / "contract-break.patch"))  # uncommitted
    orders = (shop.path / ORDERS).read_text()
    (shop.path / ORDERS).write_text(orders + "\n# a note, uncommitted\n")
    (shop.path / "services/orders/notes.txt").write_text("untracked, not ignored\n")
    before = _user_state(shop)

    created = run_cli("sandbox", "create", "--repo", str(shop.path), "--worktree", str(shop.path))
    assert created.returncode == 0, created.stdout + created.stderr
    key_match = re.search(r"^routing key: ([a-z0-9]+)$", created.stdout, re.M)
    assert key_match is not None
    key = key_match.group(1)
    env = dict(re.findall(r"^(LOOPGATE_[A-Z_]+)=(\S+)$", created.stdout, re.M))
    assert "forks: inventory, orders" in created.stdout
    assert _user_state(shop) == before  # the user's HEAD, index and files are as they were
    assert "in_stock" in _item(env, key)  # the uncommitted contract break runs in the fork
    first = _forks(state_dir, key)

    # The fix: item_view as on base; the changed unit tests keep inventory affected.
    broken = (shop.path / INVENTORY).read_text()
    (shop.path / INVENTORY).write_text(broken.replace('"in_stock": item.stock', '"available": item.stock'))
    updated = run_cli("sandbox", "update", key)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert f"routing key: {key} (unchanged)" in updated.stdout
    assert re.search(
        r"^reforked inventory \(changed: services/inventory/inventory_app.py", updated.stdout, re.M
    )
    assert re.search(r"^kept orders ", updated.stdout, re.M)
    second = _forks(state_dir, key)
    assert second["orders"] == first["orders"] and second["inventory"] != first["inventory"]
    assert not psutil_alive(first["inventory"])
    body = _item(env, key)
    assert "available" in body and "in_stock" not in body

    # Orders back to base: unforked; an update with nothing changed touches nothing.
    (shop.path / ORDERS).write_text(orders)
    (shop.path / "services/orders/notes.txt").unlink()
    updated = run_cli("sandbox", "update", key, "--worktree", str(shop.path))
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert re.search(r"^unforked orders \(its files are back to base\)", updated.stdout, re.M)
    assert _forks(state_dir, key) == {"inventory": second["inventory"]}
    again = run_cli("sandbox", "update", key)
    assert again.returncode == 0 and "kept inventory" in again.stdout
    assert _forks(state_dir, key) == {"inventory": second["inventory"]}

    # A service the change touches for the first time since is forked and routed.
    (shop.path / ORDERS).write_text(orders + "\n# another note\n")
    updated = run_cli("sandbox", "update", key)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert re.search(r"^forked orders \(changed: services/orders/orders_app.py", updated.stdout, re.M)
    assert _forks(state_dir, key)["inventory"] == second["inventory"]
    tagged = httpx.get(
        f"{env['LOOPGATE_GATEWAY_URL']}/api/orders/nosuchorder",
        headers={"baggage": f"loopgate-sandbox={key}"},
        timeout=10,
    )
    assert tagged.status_code == 404  # served, by whichever orders: the route below proves which
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    sandbox = runtime.load_sandbox(key)
    assert sandbox is not None
    assert any(r.service == "orders" and r.target == key for r in runtime.observed_requests(sandbox))
    (shop.path / ORDERS).write_text(orders)

    listed = run_cli("sandbox", "list")
    assert re.search(rf"^{key} .* kept forks: inventory@\d+, orders@\d+$", listed.stdout, re.M), listed.stdout
    assert run_cli("sandbox", "delete", key).returncode == 0
    assert list((state_dir / "envs").glob(f"*/sandboxes/{key}")) == []
    assert processes_under(state_dir / "envs") != []  # the baseline stays for the next sandbox
    assert [p for p in processes_under(state_dir) if key in p] == []
    assert _user_state(shop)[0] == before[0]
    shop.git("checkout", "--", ".")


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_update_of_an_unknown_sandbox_is_a_config_error(state_dir: Path) -> None:
    done = run_cli("sandbox", "update", "nosuchkey1", "--head", "main")
    assert done.returncode == 2
    assert done.stderr.strip() == "loopgate: no sandbox 'nosuchkey1' (see `loopgate sandbox list`)"


def test_snapshot_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not inside a git working tree$"):
        snapshot_worktree(tmp_path)
    repo = GitRepo.init(tmp_path / "r", {"a.txt": "base\n"})
    repo.git("checkout", "-q", "-b", "other")
    repo.write("a.txt", "other\n")
    repo.commit("other")
    repo.git("checkout", "-q", "main")
    repo.write("a.txt", "main\n")
    repo.commit("main")
    with pytest.raises(AssertionError):
        repo.git("merge", "other")
    with pytest.raises(ConfigError, match=r"unresolved merge conflict in a\.txt; resolve it"):
        snapshot_worktree(repo.path)


def test_snapshot_holds_deletions_and_untracked_files_and_leaves_the_index(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "r", {"a.txt": "a\n", "b.txt": "b\n", ".gitignore": "*.log\n"})
    repo.write("a.txt", "changed\n")
    (repo.path / "b.txt").unlink()
    repo.write("c.txt", "new\n")
    repo.write("debug.log", "ignored\n")
    repo.git("add", "a.txt")  # staged, as a user might have it
    before = _user_state(repo)
    snapshot = snapshot_worktree(repo.path / ".")
    assert snapshot.parent == before[0]
    assert repo.git("diff", "--name-status", snapshot.parent, snapshot.sha).splitlines() == [
        "M\ta.txt",
        "D\tb.txt",
        "A\tc.txt",
    ]
    assert _user_state(repo) == before


def test_a_reforked_service_keeps_its_data_copy(shop: GitRepo, state_dir: Path) -> None:
    """Orders (SQLite) and payments (Postgres) re-forked: what the sandbox wrote before is still there."""
    texts = {name: (shop.path / name).read_text() for name in (ORDERS, PAYMENTS)}
    for name, text in texts.items():
        (shop.path / name).write_text(text + "\n# first attempt\n")
    created = run_cli("sandbox", "create", "--repo", str(shop.path), "--worktree", str(shop.path))
    assert created.returncode == 0, created.stdout + created.stderr
    assert "forks: orders, payments" in created.stdout
    key_match = re.search(r"^routing key: ([a-z0-9]+)$", created.stdout, re.M)
    assert key_match is not None
    key = key_match.group(1)
    env = dict(re.findall(r"^(LOOPGATE_[A-Z_]+)=(\S+)$", created.stdout, re.M))
    tagged = {"baggage": f"loopgate-sandbox={key}"}
    try:
        body = {"sku": "sku-red-mug", "qty": 1, "card": "4242-4242-4242-4242"}
        order = httpx.post(
            f"{env['LOOPGATE_GATEWAY_URL']}/api/checkout", json=body, headers=tagged, timeout=10
        )
        assert order.status_code == 201, order.text
        order_id, charge_id = order.json()["id"], order.json()["charge_id"]
        first = _forks(state_dir, key)

        for name, text in texts.items():
            (shop.path / name).write_text(text + "\n# second attempt\n")
        updated = run_cli("sandbox", "update", key)
        assert updated.returncode == 0, updated.stdout + updated.stderr
        assert "reforked orders" in updated.stdout and "reforked payments" in updated.stdout
        second = _forks(state_dir, key)
        assert all(second[name] != first[name] for name in ("orders", "payments"))

        again = httpx.get(f"{env['LOOPGATE_GATEWAY_URL']}/api/orders/{order_id}", headers=tagged, timeout=10)
        assert again.status_code == 200 and again.json()["charge_id"] == charge_id
        charge = httpx.get(f"{env['LOOPGATE_PAYMENTS_URL']}/charges/{charge_id}", headers=tagged, timeout=10)
        assert charge.status_code == 200, charge.text
        # The baseline never saw them: the copies are the sandbox's own.
        assert (
            httpx.get(f"{env['LOOPGATE_GATEWAY_URL']}/api/orders/{order_id}", timeout=10).status_code == 404
        )
    finally:
        assert run_cli("sandbox", "delete", key).returncode == 0
        for name, text in texts.items():
            (shop.path / name).write_text(text)

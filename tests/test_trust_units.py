"""Small pieces of the trust boundaries, checked without Docker: plain failure tails, unreachable registries,
release records per target, fixes that name nox sessions, the results file format."""

from __future__ import annotations

import ast
import json
import time

import pytest
from test_card import sample_record

from tools import PROJECT_ROOT
from tools.core.errors import UserError
from tools.core.recipe import load_recipe
from tools.mech import console
from tools.mech.registry import RegistryClient
from tools.stages import card, results
from tools.stages.publish import _PushLog
from tools.stages.record import load_record, release_dir, write_release


def test_failure_tail_is_plain_text(capsys):
    console.print_tail(console.RunResult(1, ["step [red]x[/] failed", "[dim]|[/] literal"], PROJECT_ROOT / "x.log"))
    err = capsys.readouterr().err
    assert "  | step [red]x[/] failed" in err and "  | [dim]|[/] literal" in err
    assert err.count("[dim]|[/]") == 1  # the log's own text, not our markup


def test_registry_where_nothing_listens_is_one_message_at_once():
    from registry import free_port

    port = free_port()
    logged: list[str] = []
    client = RegistryClient(f"127.0.0.1:{port}", None, retries=4, backoff_s=5, timeout_s=5, log=logged.append)
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        client.check_access("ns/img")
    assert time.monotonic() - start < 3, "a refused connection was retried"
    text = err.value.render()
    assert f"registry 127.0.0.1:{port} is not reachable" in text and "not listening" in text
    assert logged and "unreachable" in logged[0]


def test_publish_log_exists_before_the_first_request(build_dir):
    log = _PushLog("tiny-cpu", None, "127.0.0.1:1/flagrelease")
    assert log.path.is_file() and "127.0.0.1:1/flagrelease" in log.path.read_text()


def test_records_are_per_registry_target_and_a_republish_keeps_history(build_dir):
    recipe, _ = load_recipe("tiny-cpu")
    first = sample_record("tiny-cpu")
    elsewhere = first.model_copy(update={"registry": "127.0.0.1:5000", "repository": "team-b/flagrelease"})
    a, _ = write_release(first, card.render_card(recipe, first))
    b, card_b = write_release(elsewhere, card.render_card(recipe, elsewhere))
    assert a != b and a.parent == release_dir(first.registry, first.repository, first.immutable_tag)
    assert b == build_dir / "releases" / "127.0.0.1:5000" / "team-b" / "flagrelease" / first.immutable_tag / \
        "record.json"
    assert load_record(a) == first and load_record(b) == elsewhere
    assert "`127.0.0.1:5000/team-b/flagrelease`" in card_b.read_text()
    later = first.times.model_copy(update={"started_at": "2026-12-01T00:00:00+00:00"})
    again = first.model_copy(update={"times": later})
    write_release(again, card.render_card(recipe, again))
    kept = list((a.parent / "history").glob("*/record.json"))
    assert len(kept) == 1 and load_record(kept[0]) == first and load_record(a) == again


def test_fixes_name_nox_sessions_not_the_module():
    """Users run sessions; a fix that says `python -m tools ...` sends them around nox."""
    found, fixes = [], 0
    for path in (PROJECT_ROOT / "tools").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "fix":
                fixes += 1
                text = " ".join(c.value for c in ast.walk(node.value)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str))
                if "python -m tools" in text:
                    found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.value.lineno}")
    assert fixes > 50 and found == []


def test_results_are_stored_per_image_and_recipe(build_dir):
    recipe, _ = load_recipe("tiny-cpu")
    image = "sha256:" + "ab" * 32
    path = results.store(results.result_for(recipe, "smoke", image, passed=True))
    assert path == build_dir / "results" / ("sha256-" + "ab" * 32) / "tiny-cpu" / "smoke.json"
    data = json.loads(path.read_text())
    assert data["config_hash"] == results.config_hash(data["config"])
    assert data["config"]["serve"]["served_model_name"] == recipe.serve.served_model_name
    assert results.mismatch(results.load(image, "tiny-cpu", "smoke"), recipe, image) is None
    assert "not sha256:cdcd" in results.mismatch(results.load(image, "tiny-cpu", "smoke"), recipe,
                                                  "sha256:" + "cd" * 32)
    del data["config_hash"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="lacks config_hash"):
        results.load(image, "tiny-cpu", "smoke")


@pytest.mark.parametrize(("text", "shown"), [
    ("https://u:sekrit@host/simple", "https://u:***@host/simple"),
    ("pip --index-url https://user:tok3n@mirror.example/simple x",
     "pip --index-url https://user:***@mirror.example/simple x"),
    ("token=abc def", "token=*** def"),
    ("Authorization: Bearer xyz", "Authorization: Bearer ***"),
    ("password: hunter2", "password: ***"),
    ("http://host/simple", "http://host/simple"),
])
def test_redact_masks_the_secret_itself(text, shown):
    assert console.redact(text) == shown


def test_check_locks_refuses_a_token_on_its_command_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tools", "check-locks", "--online", "--vendor", "cpu", "--index-url",
                           "https://me:s3cr3t-token@mirror.example/simple"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2
    assert "check-locks --index-url carries credentials" in proc.stderr and "FLAGREL_INDEX_URL" in proc.stderr
    assert "s3cr3t-token" not in proc.stdout + proc.stderr

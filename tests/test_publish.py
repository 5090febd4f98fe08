"""Publishing: the results gate, credentials, retries, and real pushes to a real authenticated registry."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from registry import (  # noqa: F401
    RegistryServer,
    docker_cli,
    make_image,
    registry_env,
    registry_server,
    remove_image,
)

from tools.core import labels as L
from tools.core.errors import UserError
from tools.core.lock import load_lock
from tools.core.recipe import load_recipe
from tools.mech.registry import (
    Credentials,
    RegistryClient,
    TransientError,
    classify,
    credentials_from_docker_config,
    find_credentials,
    with_retries,
)
from tools.stages import publish as pub
from tools.stages import results
from tools.stages.card import render_card
from tools.stages.publish import LocalImage, PublishOptions, publish
from tools.stages.record import load_record, release_dir

FAST = PublishOptions(retries=2, backoff_s=0.05)


@pytest.fixture
def isolated(build_dir, tmp_path, monkeypatch):
    """No credentials, registry or docker config from the host leak into a test."""
    for var in ("FLAGREL_REGISTRY", "FLAGREL_NAMESPACE", "FLAGREL_REGISTRY_USER", "FLAGREL_REGISTRY_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    monkeypatch.setenv("FLAGREL_CONFIG", str(tmp_path / "absent.toml"))
    # each test its own repository: tests never see each other's tags in the shared registry
    monkeypatch.setenv("FLAGREL_NAMESPACE", "t" + secrets.token_hex(4))
    return build_dir


def _labels(content_key: str) -> dict[str, str]:
    loaded = load_lock()
    from tools.stages import patches

    stack = patches.stack_info("cpu")
    stack_hash, stack_id = stack.stack_hash, stack.short_id
    return {
        L.RECIPE: "tiny-cpu", L.VENDOR: "cpu", L.CONTENT_KEY: content_key,
        L.VLLM_VERSION: loaded.lock.upstream.version, L.VLLM_COMMIT: loaded.lock.upstream.git_commit,
        L.FLAGGEMS_VERSION: loaded.lock.flaggems.version, L.LOCK_HASH: loaded.sha256,
        L.STACK_HASH: stack_hash, L.STACK_ID: stack_id, L.INSTALL_MODE: "wheel-overlay", L.REVISION: "test",
    }


def _store(image_id: str, smoke: bool | str = True, op_tests: bool | str = True, recipe_name: str = "tiny-cpu") -> None:
    """True: passed; False: failed; a string: skipped with that reason (results of the recipe as it is now)."""
    recipe, _ = load_recipe(recipe_name)
    for kind, outcome in (("smoke", smoke), ("op-tests", op_tests)):
        if outcome is None:
            continue
        skipped = outcome if isinstance(outcome, str) else None
        results.store(results.result_for(recipe, kind, image_id, passed=outcome is True, skipped_reason=skipped,
                                         report=f"/reports/{kind}.json"))


# -- the gate (no docker) ------------------------------------------------------------------------------------

@pytest.fixture
def fake_image(isolated, monkeypatch):
    image = LocalImage(ref="flagrelease-local/tiny-cpu:latest", image_id="sha256:" + "a" * 64,
                       labels=_labels("b" * 64), repo_digests=())
    monkeypatch.setattr(pub, "inspect_image", lambda ref: image)
    monkeypatch.setenv("FLAGREL_REGISTRY", "registry.example.com")
    return image


def _refusal(image_ref: str = "flagrelease-local/tiny-cpu:latest") -> str:
    recipe, _ = load_recipe("tiny-cpu")
    with pytest.raises(UserError) as info:
        publish(recipe, image_ref, PublishOptions(dry_run=True))
    return info.value.render()


def test_untested_image_is_refused(fake_image):
    text = _refusal()
    assert "refusing to publish" in text and "no stored smoke result" in text and "no stored op-tests" in text


def test_failed_image_is_refused(fake_image):
    _store(fake_image.image_id, smoke=True, op_tests=False)
    text = _refusal()
    assert "op-tests FAILED" in text and "smoke" not in text.split("fix:")[0].replace("stored results", "")


@pytest.mark.parametrize(("kind", "flag"), [("smoke", "--skip-smoke"), ("op-tests", "--skip-op-tests")])
def test_skipped_check_is_refused_naming_the_flag(fake_image, kind, flag):
    outcomes = {"smoke": True, "op_tests": True}
    outcomes["op_tests" if kind == "op-tests" else "smoke"] = "no GPU on this host"
    _store(fake_image.image_id, **outcomes)
    text = _refusal()
    assert f"{kind} was skipped with {flag} ('no GPU on this host')" in text
    assert f"rebuild without {flag}" in text


NOTHING_RAN = ("nothing was tested: all 42 case(s) skipped: FlagGems 0/42 passed, 42 skipped (flag_gems does not "
               "import (RuntimeError: No device were detected on your machine !))")


def _store_nothing_ran(image_id: str) -> None:
    _store(image_id, smoke=True, op_tests=None)
    recipe, _ = load_recipe("tiny-cpu")
    results.store(results.result_for(recipe, "op-tests", image_id, passed=False, report="/reports/summary.json",
                                     summary={"counts": {"passed": 0, "failed": 0, "skipped": 42, "total": 42},
                                              "verdict": NOTHING_RAN}))


def test_op_tests_where_nothing_ran_are_refused_naming_the_opt_in(fake_image):
    _store_nothing_ran(fake_image.image_id)
    text = _refusal()
    assert f"op-tests FAILED: {NOTHING_RAN}" in text
    assert "or publish with --accept-untested-op-tests REASON (recorded in the release record and on the card)" in text


def test_accepted_untested_op_tests_are_recorded_and_shown_on_the_card(fake_image):
    _store_nothing_ran(fake_image.image_id)
    recipe, _ = load_recipe("tiny-cpu")
    reason = "FlagGems has no device here; vLLM kernels tested on the site's runner"
    record = publish(recipe, fake_image.ref, PublishOptions(dry_run=True, accept_untested_op_tests=f" {reason} "))
    (waiver,) = record.waivers
    assert (waiver.kind, waiver.flag, waiver.reason) == ("op-tests", "--accept-untested-op-tests", reason)
    assert waiver.status.startswith(f"op-tests FAILED: {NOTHING_RAN}")
    assert record.tests["op-tests"].passed is False and record.tests["smoke"].passed is True
    assert json.loads(record.model_dump_json())["waivers"][0]["reason"] == reason
    text = render_card(recipe, record)
    assert "**Operator tests did NOT pass on this image** (op-tests FAILED: nothing was tested" in text
    assert f"published anyway with `--accept-untested-op-tests`: {reason}" in text
    assert "passed on this image against float64" not in text


def test_the_opt_in_covers_op_tests_only_and_needs_a_reason(fake_image):
    recipe, _ = load_recipe("tiny-cpu")
    _store(fake_image.image_id, smoke=False, op_tests=None)  # no op-test result at all, and smoke failed
    with pytest.raises(UserError) as info:
        publish(recipe, fake_image.ref, PublishOptions(dry_run=True, accept_untested_op_tests="no device"))
    text = info.value.render()
    assert "smoke FAILED" in text and "op-tests" not in text.split("where:")[0]
    _store(fake_image.image_id, smoke=True, op_tests=None)
    record = publish(recipe, fake_image.ref, PublishOptions(dry_run=True, accept_untested_op_tests="no device"))
    assert record.waivers[0].status == "no stored op-tests result for recipe tiny-cpu on this image"
    assert "op-tests" not in record.tests
    with pytest.raises(UserError, match="--accept-untested-op-tests needs a reason"):
        publish(recipe, fake_image.ref, PublishOptions(dry_run=True, accept_untested_op_tests="  "))


def test_passed_op_tests_need_no_waiver_and_the_card_says_what_ran(fake_image):
    _store(fake_image.image_id, smoke=True, op_tests=None)
    verdict = ("21 passed, 42 skipped of 63: vLLM kernels 21/21 passed; FlagGems 0/42 passed, 42 skipped "
               "(flag_gems does not import (RuntimeError: No device))")
    recipe, _ = load_recipe("tiny-cpu")
    results.store(results.result_for(recipe, "op-tests", fake_image.image_id, passed=True,
                                     summary={"counts": {"passed": 21, "failed": 0, "skipped": 42, "total": 63},
                                              "verdict": verdict}))
    record = publish(recipe, fake_image.ref, PublishOptions(dry_run=True, accept_untested_op_tests="unused"))
    assert record.waivers == []
    text = render_card(recipe, record)
    assert ("passed on this image against float64 references (21 of 63 cases passed: vLLM kernels 21/21 passed; "
            "FlagGems 0/42 passed, 42 skipped (flag_gems does not import") in text


def test_publish_cli_passes_the_opt_in(monkeypatch):
    import argparse

    from tools.cli import publish as cli

    seen: list[PublishOptions] = []

    def fake_publish(recipe, image, options):
        seen.append(options)
        raise UserError("stop here")

    monkeypatch.setattr(cli, "publish", fake_publish)
    parser = argparse.ArgumentParser()
    cli.configure("publish", parser)
    with pytest.raises(UserError, match="stop here"):
        cli.command("publish", parser.parse_args(["tiny-cpu", "--accept-untested-op-tests", "site tested"]))
    assert seen[0].accept_untested_op_tests == "site tested"
    assert parser.parse_args(["tiny-cpu"]).accept_untested_op_tests is None


def test_results_of_another_image_do_not_count(fake_image):
    _store("sha256:" + "c" * 64)
    assert "no stored smoke result" in _refusal()


def test_image_of_another_recipe_is_refused(fake_image, monkeypatch):
    _store(fake_image.image_id)
    recipe, _ = load_recipe("robobrain2-7b-fp8dynamic-nvidia")
    with pytest.raises(UserError, match="built for recipe 'tiny-cpu'"):
        publish(recipe, "x", PublishOptions(dry_run=True))


def test_dry_run_of_a_validated_image_names_the_tags_and_writes_nothing(fake_image, isolated):
    _store(fake_image.image_id)
    recipe, _ = load_recipe("tiny-cpu")
    record = publish(recipe, fake_image.ref, PublishOptions(dry_run=True))
    assert record.dry_run and record.digest is None
    assert [t.action for t in record.tags] == ["would-push", "would-push"]
    assert record.tags[0].tag == f"tiny-cpu-cpu-{load_lock().lock.upstream.version}-bbbbbbbbbbbb"
    assert not (isolated / "releases").exists()


# -- credentials and retries (no docker) ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "kind"), [
    ("received unexpected HTTP status: 503 Service Unavailable", "transient"),
    ("read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer", "transient"),
    ("Put http://r/v2/x/blobs/uploads/: EOF", "transient"),
    ("no basic auth credentials", "auth"),
    ("unauthorized: authentication required", "auth"),
    ("denied: requested access to the resource is denied", "auth"),
    ("tag does not exist: x", "other"),
    # nothing listens / no such host: said at once, never retried as if transient
    ("dial tcp 127.0.0.1:5999: connect: connection refused", "unreachable"),
    ("dial tcp: lookup registry.invalid: no such host", "unreachable"),
])
def test_classify_registry_errors(text, kind):
    assert classify(text) == kind


def test_transient_errors_are_retried_with_backoff_auth_errors_are_not():
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TransientError("HTTP 503")
        return "ok"

    assert with_retries(flaky, what="x", retries=3, backoff_s=0.05,
                        is_transient=lambda e: isinstance(e, TransientError)) == "ok"
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # exponential
    calls.clear()

    def denied() -> str:
        calls.append(0)
        raise UserError("refused")

    with pytest.raises(UserError):
        with_retries(denied, what="x", retries=3, backoff_s=0.05, is_transient=lambda e: isinstance(e, TransientError))
    assert len(calls) == 1


def test_retries_run_out_with_one_clear_message():
    def down() -> str:
        raise TransientError("HTTP 503")

    with pytest.raises(UserError) as info:
        with_retries(down, what="docker push r/x:t", retries=2, backoff_s=0.01,
                     is_transient=lambda e: isinstance(e, TransientError))
    assert "docker push r/x:t: still failing after 3 attempts: HTTP 503" in info.value.render()


def test_docker_push_retries_5xx_but_not_auth(isolated, monkeypatch):
    outputs = ["received unexpected HTTP status: 502 Bad Gateway", "connection reset by peer",
               "latest: digest: sha256:" + "e" * 64 + " size: 528"]
    seen: list[list[str]] = []

    def fake_docker(cmd, env, log, timeout):
        seen.append(cmd)
        out = outputs[len(seen) - 1]
        return (0 if "digest:" in out else 1), out

    monkeypatch.setattr(pub, "_docker", fake_docker)
    log = pub._PushLog("tiny-cpu", None)
    assert pub.push("r/x:latest", {}, log, FAST) == "sha256:" + "e" * 64
    assert len(seen) == 3
    outputs[:] = ["unauthorized: authentication required"]
    seen.clear()
    with pytest.raises(UserError, match="refused the push"):
        pub.push("r/x:latest", {}, log, FAST)
    assert len(seen) == 1


def test_credentials_from_env_or_docker_config(isolated, monkeypatch, tmp_path):
    assert find_credentials("127.0.0.1:5000") is None
    config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    auth = base64.b64encode(b"alice:s3cret:with:colons").decode()
    config.write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}))
    creds = credentials_from_docker_config("127.0.0.1:5000")
    assert creds and (creds.username, creds.password, creds.from_env) == ("alice", "s3cret:with:colons", False)
    assert "s3cret" not in repr(creds)
    monkeypatch.setenv("FLAGREL_REGISTRY_USER", "bob")
    with pytest.raises(UserError, match="FLAGREL_REGISTRY_PASSWORD is not set"):
        find_credentials("127.0.0.1:5000")
    monkeypatch.setenv("FLAGREL_REGISTRY_PASSWORD", "pw")
    creds = find_credentials("127.0.0.1:5000")
    assert creds and creds.from_env and creds.username == "bob"


class _FakeRegistry(BaseHTTPRequestHandler):
    """A scripted v2 endpoint: each request pops the next (status, headers, body) from `script`."""

    script: list[tuple[int, dict[str, str], bytes]] = []
    seen: list[tuple[str, str, str | None]] = []

    def _answer(self) -> None:
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path.startswith("/token"):
            good = "Basic " + base64.b64encode(b"u:p").decode()
            ok = self.headers.get("Authorization") == good
            body = json.dumps({"token": "tok"}).encode() if ok else b"{}"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        status, headers, body = type(self).script.pop(0)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value.replace("PORT", str(self.server.server_address[1])))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer  # noqa: N815 - http.server's naming

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_registry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRegistry)
    _FakeRegistry.script, _FakeRegistry.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _client(address: str, creds: Credentials | None, retries: int = 3) -> RegistryClient:
    return RegistryClient(address, creds, retries=retries, backoff_s=0.01, timeout_s=5)


DIGEST = "sha256:" + "f" * 64


def test_registry_queries_retry_5xx(fake_registry):
    _FakeRegistry.script = [(503, {}, b""), (502, {}, b""), (200, {"Docker-Content-Digest": DIGEST}, b"")]
    assert _client(fake_registry, None).manifest_digest("ns/img", "t") == DIGEST
    assert len(_FakeRegistry.seen) == 3
    _FakeRegistry.script = [(404, {}, b"")]
    assert _client(fake_registry, None).manifest_digest("ns/img", "absent") is None
    _FakeRegistry.script = [(500, {}, b"")] * 3
    with pytest.raises(UserError, match="still failing after 3 attempts"):
        _client(fake_registry, None, retries=2).manifest_digest("ns/img", "t")


def test_registry_wanting_credentials_we_lack_says_so(fake_registry):
    _FakeRegistry.script = [(401, {"WWW-Authenticate": 'Basic realm="r"'}, b"")]
    with pytest.raises(UserError) as info:
        _client(fake_registry, None).check_access("ns/img")
    assert "needs credentials and none were found" in info.value.render()
    assert "FLAGREL_REGISTRY_USER" in info.value.render()


def test_basic_auth_answer_and_rejection_without_retries(fake_registry):
    creds = Credentials("u", "p")
    _FakeRegistry.script = [(401, {"WWW-Authenticate": 'Basic realm="r"'}, b""),
                            (200, {"Docker-Content-Digest": DIGEST}, b"")]
    assert _client(fake_registry, creds).manifest_digest("ns/img", "t") == DIGEST
    assert _FakeRegistry.seen[-1][2] == "Basic " + base64.b64encode(b"u:p").decode()
    _FakeRegistry.seen.clear()
    _FakeRegistry.script = [(401, {"WWW-Authenticate": 'Basic realm="r"'}, b""),
                            (401, {"WWW-Authenticate": 'Basic realm="r"'}, b"")]
    with pytest.raises(UserError, match="refused the credentials"):
        _client(fake_registry, Credentials("u", "wrong"), retries=5).manifest_digest("ns/img", "t")
    assert len(_FakeRegistry.seen) == 2  # one challenge, one answer, no retries


def test_bearer_token_flow(fake_registry):
    challenge = 'Bearer realm="http://127.0.0.1:PORT/token",service="reg",scope="repository:ns/img:pull"'
    _FakeRegistry.script = [(401, {"WWW-Authenticate": challenge}, b""),
                            (200, {"Docker-Content-Digest": DIGEST}, b"")]
    assert _client(fake_registry, Credentials("u", "p")).manifest_digest("ns/img", "t") == DIGEST
    assert _FakeRegistry.seen[-1][2] == "Bearer tok"


# -- a real registry ----------------------------------------------------------------------------------------

@pytest.fixture
def images(docker_cli):  # noqa: F811 - the fixture imported above
    made: list[str] = []

    def make(content: str, content_key: str | None = None, *, smoke: bool | str = True,
             op_tests: bool | str = True) -> tuple[str, str]:
        key = content_key or secrets.token_hex(32)
        ref = f"flagrelease-test/publish-{secrets.token_hex(4)}:latest"
        image_id = make_image(ref, content, _labels(key))
        made.append(image_id)
        _store(image_id, smoke, op_tests)
        return ref, image_id

    yield make
    for image_id in made:
        remove_image(image_id)


def _scan_for_secrets(root: Path, creds: list[str], captured: str) -> None:
    for secret in creds:
        assert secret not in captured, "a credential appeared in the output"
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in creds:
                assert secret.encode() not in data, f"a credential was written to {path}"


def _secret_forms(server: RegistryServer) -> list[str]:
    pair = f"{server.user}:{server.password}".encode()
    return [server.password, base64.b64encode(pair).decode()]


def test_push_without_credentials_fails_with_a_clear_message(isolated, registry_server, images, monkeypatch):  # noqa: F811
    ref, _ = images("no credentials")
    monkeypatch.setenv("FLAGREL_REGISTRY", registry_server.url)
    recipe, _ = load_recipe("tiny-cpu")
    with pytest.raises(UserError) as info:
        publish(recipe, ref, FAST)
    text = info.value.render()
    assert f"registry {registry_server.url} needs credentials and none were found" in text
    assert "FLAGREL_REGISTRY_USER" in text and "docker login" in text


def test_publish_pushes_verifies_records_and_leaks_nothing(isolated, registry_server, images, monkeypatch,  # noqa: F811
                                                           capfd):
    ref, image_id = images("release one")
    registry_env(monkeypatch, registry_server)
    temp_before = set(Path(tempfile.gettempdir()).glob("flagrel-docker-config-*"))
    argvs: list[list[str]] = []
    real_run = subprocess.run

    def spy(cmd, *args, **kwargs):
        argvs.append([str(c) for c in cmd])
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    recipe, _ = load_recipe("tiny-cpu")
    record = publish(recipe, ref, FAST)

    # the digest of every tag, asked of the registry independently, is the recorded one
    repo = f"{os.environ['FLAGREL_NAMESPACE']}/flagrelease"
    assert record.digest and record.digest.startswith("sha256:")
    for tag in record.tags:
        assert registry_server.digest(repo, tag.tag) == record.digest == tag.digest
        assert tag.verified and tag.action == "pushed"
    assert [t.kind for t in record.tags] == ["immutable", "moving"]
    assert record.tags[1].tag == "flagrelease_cpu_tiny_llama"
    # docker's own view agrees
    inspect = json.loads(real_run(["docker", "image", "inspect", image_id], capture_output=True, text=True).stdout)
    assert f"{registry_server.url}/{repo}@{record.digest}" in inspect[0]["RepoDigests"]

    out = release_dir(registry_server.url, repo, record.immutable_tag)
    assert load_record(out / "record.json") == record
    card = (out / "README.md").read_text()
    assert f"docker pull {registry_server.url}/{repo}:flagrelease_cpu_tiny_llama" in card
    assert record.digest in card
    assert record.tests["smoke"].passed and record.host.cpu_count >= 1 and record.times.push_s > 0

    # no credential in argv, in any file the run wrote, or in what it printed; no temporary config left
    for argv in argvs:
        assert registry_server.password not in " ".join(argv)
    captured = capfd.readouterr()
    assert str(out / "record.json") in captured.err
    _scan_for_secrets(isolated, _secret_forms(registry_server), captured.out + captured.err)
    assert set(Path(tempfile.gettempdir()).glob("flagrel-docker-config-*")) == temp_before


def test_republishing_the_same_image_changes_nothing(isolated, registry_server, images, monkeypatch):  # noqa: F811
    ref, _ = images("release same")
    registry_env(monkeypatch, registry_server)
    recipe, _ = load_recipe("tiny-cpu")
    first = publish(recipe, ref, FAST)
    second = publish(recipe, ref, FAST)
    assert second.digest == first.digest
    assert [t.action for t in second.tags] == ["unchanged", "unchanged"]


def test_immutable_tag_collision_is_refused_and_nothing_moves(isolated, registry_server, images,  # noqa: F811
                                                               monkeypatch):
    key = secrets.token_hex(32)
    ref_a, _ = images("content A", key)
    ref_b, _ = images("content B, same content key label", key)
    registry_env(monkeypatch, registry_server)
    recipe, _ = load_recipe("tiny-cpu")
    first = publish(recipe, ref_a, FAST)
    with pytest.raises(UserError) as info:
        publish(recipe, ref_b, FAST)
    assert "already exists with other content" in info.value.render()
    assert "refusing to move it" in info.value.render()
    repo = f"{os.environ['FLAGREL_NAMESPACE']}/flagrelease"
    assert registry_server.digest(repo, first.immutable_tag) == first.digest
    assert registry_server.digest(repo, "flagrelease_cpu_tiny_llama") == first.digest


def test_moving_tag_moves_to_a_new_build(isolated, registry_server, images, monkeypatch):  # noqa: F811
    ref_a, _ = images("build A")
    ref_b, _ = images("build B")
    registry_env(monkeypatch, registry_server)
    recipe, _ = load_recipe("tiny-cpu")
    a = publish(recipe, ref_a, FAST)
    b = publish(recipe, ref_b, FAST)
    assert a.digest != b.digest and a.immutable_tag != b.immutable_tag
    moving = b.tags[1]
    assert (moving.action, moving.previous_digest, moving.digest) == ("moved", a.digest, b.digest)
    repo = f"{os.environ['FLAGREL_NAMESPACE']}/flagrelease"
    assert registry_server.digest(repo, a.immutable_tag) == a.digest  # the old build tag stays
    assert registry_server.digest(repo, "flagrelease_cpu_tiny_llama") == b.digest


def test_untested_and_failed_images_are_not_pushed(isolated, registry_server, images, monkeypatch):  # noqa: F811
    untested, _ = images("untested", smoke=None, op_tests=None)
    failed, _ = images("failed", smoke=True, op_tests=False)
    registry_env(monkeypatch, registry_server)
    recipe, _ = load_recipe("tiny-cpu")
    for ref, why in ((untested, "no stored smoke result"), (failed, "op-tests FAILED")):
        with pytest.raises(UserError, match=why):
            publish(recipe, ref, FAST)
    repo = f"{os.environ['FLAGREL_NAMESPACE']}/flagrelease"
    assert registry_server.digest(repo, "flagrelease_cpu_tiny_llama") is None


def test_credentials_from_the_docker_config(isolated, registry_server, images, monkeypatch):  # noqa: F811
    ref, _ = images("docker config credentials")
    monkeypatch.setenv("FLAGREL_REGISTRY", registry_server.url)
    auth = base64.b64encode(f"{registry_server.user}:{registry_server.password}".encode()).decode()
    (Path(os.environ["DOCKER_CONFIG"]) / "config.json").write_text(
        json.dumps({"auths": {registry_server.url: {"auth": auth}}}))
    recipe, _ = load_recipe("tiny-cpu")
    record = publish(recipe, ref, FAST)
    assert record.tags[0].verified
    repo = f"{os.environ['FLAGREL_NAMESPACE']}/flagrelease"
    assert registry_server.digest(repo, record.immutable_tag) == record.digest


def test_wrong_password_is_refused_at_once(isolated, registry_server, images, monkeypatch):  # noqa: F811
    ref, _ = images("wrong password")
    monkeypatch.setenv("FLAGREL_REGISTRY", registry_server.url)
    monkeypatch.setenv("FLAGREL_REGISTRY_USER", registry_server.user)
    monkeypatch.setenv("FLAGREL_REGISTRY_PASSWORD", "not-" + registry_server.password)
    recipe, _ = load_recipe("tiny-cpu")
    start = time.monotonic()
    with pytest.raises(UserError, match="refused the credentials"):
        # a long backoff: if auth errors were retried this would take minutes
        publish(recipe, ref, PublishOptions(retries=4, backoff_s=30))
    assert time.monotonic() - start < 20


def test_a_second_namespace_gets_its_own_record(isolated, registry_server, images, monkeypatch):  # noqa: F811
    ref, _ = images("two namespaces")
    registry_env(monkeypatch, registry_server)
    recipe, _ = load_recipe("tiny-cpu")
    first = publish(recipe, ref, FAST)
    first_dir = release_dir(first.registry, first.repository, first.immutable_tag)
    first_bytes = (first_dir / "record.json").read_bytes()
    second = publish(recipe, ref, PublishOptions(namespace="t" + secrets.token_hex(4), retries=2, backoff_s=0.05))
    second_dir = release_dir(second.registry, second.repository, second.immutable_tag)
    assert second.repository != first.repository and second_dir != first_dir
    assert (first_dir / "record.json").read_bytes() == first_bytes, "the first release's record was overwritten"
    assert load_record(second_dir / "record.json").repository == second.repository
    assert f"docker pull {registry_server.url}/{second.repository}:" in (second_dir / "README.md").read_text()

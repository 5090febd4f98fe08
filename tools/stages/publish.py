"""Publish a validated image: tag, push, verify, record, card.

Order of events (each step refuses with one message rather than leaving a half-done release):
  1. the local image is a FlagRelease build of this recipe (labels), and its stored smoke and op-test
     results for this exact image id passed (a skipped check is not a pass, nor is an op-test run in which
     nothing ran); op tests that did not pass are accepted only with --accept-untested-op-tests REASON,
     which the record and the card carry;
  2. the registry answers and accepts our credentials;
  3. the immutable tag: absent -> push; present with our content -> nothing to do; present with other
     content -> refuse (an immutable tag never moves);
  4. verify the immutable tag's registry digest against what docker reported (push output, RepoDigests);
  5. only then the moving tags, each verified to point at the same digest;
  6. record.json and the model card README.md under build/releases/<registry>/<repository>/<immutable tag>/
     (one folder per registry target: publishing elsewhere never overwrites another release's record).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tools.core import labels as L
from tools.core.errors import CheckFailed, UserError
from tools.core.recipe import Recipe
from tools.mech import docker
from tools.mech.console import info, new_log, phase, stderr_line
from tools.mech.registry import (
    UNREACHABLE_FIX,
    Credentials,
    RegistryClient,
    TransientError,
    classify,
    docker_env,
    find_credentials,
    scrub,
    with_retries,
)
from tools.stages import facts, results
from tools.stages.card import render_card
from tools.stages.record import (
    ImageContents,
    ReleaseRecord,
    TagAction,
    TagRecord,
    Times,
    Waiver,
    contents_from,
    host_facts,
    patch_stack_from,
    result_records,
    versions_from,
    write_release,
)
from tools.stages.tags import ReleaseTags, release_tags, resolve_target

SKIP_FLAGS: dict[results.Kind, str] = {"smoke": "--skip-smoke", "op-tests": "--skip-op-tests"}
ACCEPT_UNTESTED_OP_TESTS = "--accept-untested-op-tests"
_PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


@dataclass(frozen=True)
class PublishOptions:
    registry: str | None = None
    namespace: str | None = None
    dry_run: bool = False
    # transient registry errors (5xx, connection reset) are retried this many times, with exponential backoff
    retries: int = 4
    backoff_s: float = 2.0
    timeout_s: float = 30.0
    push_timeout_s: float = 3600.0
    # publish although the image's op tests did not pass (failed, ran nothing, skipped, never ran): the reason
    accept_untested_op_tests: str | None = None


@dataclass(frozen=True)
class LocalImage:
    ref: str
    image_id: str
    labels: dict[str, str]
    repo_digests: tuple[str, ...]


def inspect_image(ref: str) -> LocalImage:
    data = docker.inspect_image(ref)
    return LocalImage(ref=ref, image_id=data["Id"], labels=(data.get("Config") or {}).get("Labels") or {},
                      repo_digests=tuple(data.get("RepoDigests") or ()))


def digests_for(image: LocalImage, repo_ref: str) -> set[str]:
    """Digests docker recorded for this image in one repository (RepoDigests: repo@sha256:...)."""
    def norm(name: str) -> str:
        # docker shortens Docker Hub names (docker.io/library/x -> x); compare in one spelling
        for prefix in ("docker.io/", "index.docker.io/"):
            name = name.removeprefix(prefix)
        return name.removeprefix("library/")

    return {d.split("@", 1)[1] for d in image.repo_digests if "@" in d and norm(d.split("@", 1)[0]) == norm(repo_ref)}


def check_labels(recipe: Recipe, image: LocalImage) -> None:
    key = image.labels.get(L.CONTENT_KEY)
    if not key:
        raise UserError(f"image {image.ref} has no {L.CONTENT_KEY} label: not a FlagRelease build",
                        where=image.ref, fix=f"build it with nox -s build-{recipe.vendor} -- {recipe.name}")
    for label, want in ((L.RECIPE, recipe.name), (L.VENDOR, recipe.vendor)):
        have = image.labels.get(label)
        if have != want:
            raise UserError(f"image {image.ref} was built for {label.rsplit('.', 1)[-1]} {have!r}, not {want!r}",
                            where=f"label {label}", fix="publish the recipe the image was built from")


def check_results(recipe: Recipe, image: LocalImage, *, accept_untested_op_tests: str | None = None,
                  waivers: list[Waiver] | None = None) -> dict[str, results.StoredResult]:
    """Only an image whose own smoke and op-test results passed, for this recipe as it is now, may leave the
    machine. Op tests that did not pass are let through only with a reason (accept_untested_op_tests),
    appended to `waivers`."""
    if accept_untested_op_tests is not None and not accept_untested_op_tests.strip():
        raise UserError(f"{ACCEPT_UNTESTED_OP_TESTS} needs a reason", where=ACCEPT_UNTESTED_OP_TESTS,
                        fix=f"say why, e.g. {ACCEPT_UNTESTED_OP_TESTS} 'no NPU on the build host; tested on site'")
    stored: dict[str, results.StoredResult] = {}
    problems: list[str] = []
    fixes: list[str] = []
    revalidate = (f"validate again: nox -s build-{recipe.vendor} -- {recipe.name} (or nox -s smoke / op-tests -- "
                  f"{recipe.name} --image {image.ref})")
    for kind, flag in SKIP_FLAGS.items():
        result = results.load(image.image_id, recipe.name, kind)
        before = len(problems)
        mismatched = False
        if result is None:
            others = results.recipes_with_results(image.image_id, kind)
            elsewhere = f" (only recipe {', '.join(others)} has one: it validates that recipe, not this)" \
                if others else ""
            problems.append(f"no stored {kind} result for recipe {recipe.name} on this image{elsewhere}")
            fixes.append(f"nox -s build-{recipe.vendor} -- {recipe.name} validates it")
        elif why := results.mismatch(result, recipe, image.image_id):
            problems.append(f"the stored {kind} result does not speak for this release: {why}")
            fixes.append(revalidate)
            mismatched = True
        elif result.skipped_reason is not None:
            problems.append(f"{kind} was skipped with {flag} ({result.skipped_reason!r})")
            fixes.append(f"rebuild without {flag}")
        elif not result.passed:
            verdict = result.summary.get("verdict") or result.summary.get("failure")
            problems.append(f"{kind} FAILED" + (f": {verdict}" if verdict else "")
                            + (f" (report: {result.report})" if result.report else ""))
            fixes.append(f"fix the {kind} failure and rebuild")
        else:
            stored[kind] = result
        if kind == "op-tests" and len(problems) > before:
            if accept_untested_op_tests is None:
                fixes[-1] += (f", or publish with {ACCEPT_UNTESTED_OP_TESTS} REASON (recorded in the release "
                              "record and on the card)")
                continue
            if result is not None and not mismatched:
                stored[kind] = result  # the record and card show what did not pass (never another config's)
            fixes.pop()
            if waivers is not None:
                waivers.append(Waiver(kind=kind, flag=ACCEPT_UNTESTED_OP_TESTS,
                                      reason=accept_untested_op_tests.strip(), status=problems.pop()))
    if problems:
        folder = results.result_path(image.image_id, recipe.name, "smoke").parent
        raise CheckFailed(f"refusing to publish {image.ref} ({image.image_id[:19]}): " + "; ".join(problems),
                          where=f"stored results under {folder}",
                          fix="; ".join(dict.fromkeys(fixes)) + " (results are kept per image id and recipe)")
    return stored


class _PushLog:
    """Everything docker said, scrubbed of credentials, in one log file whose path is printed."""

    def __init__(self, recipe: str, creds: Credentials | None, target: str = "") -> None:
        self.path: Path = new_log(f"publish-{recipe}")
        self.creds = creds
        # the file exists from the start: its path is printed before the first request, which may fail
        with self.path.open("a", encoding="utf-8") as out:
            out.write(f"# publish {recipe} to {target or '(registry)'} at {_now()}\n")

    def __call__(self, text: str) -> None:
        clean = scrub(text, self.creds)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(clean.rstrip("\n") + "\n")
        if clean.startswith("  "):  # retry notices are shown live too
            info(clean)


def _docker(cmd: list[str], env: dict[str, str], log: _PushLog, timeout: float) -> tuple[int, str]:
    shown = "docker " + " ".join(cmd)
    try:
        proc = docker.call(cmd, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        log(f"$ {shown}\n(timed out after {timeout:.0f}s)")
        raise TransientError(f"{shown} timed out after {timeout:.0f}s") from exc
    out = scrub(proc.stdout + proc.stderr, log.creds)
    log(f"$ {shown}\n{out}")
    return proc.returncode, out


def push(ref: str, env: dict[str, str], log: _PushLog, options: PublishOptions) -> str:
    """docker push one tag; returns the digest docker reports. Retries transient errors, never auth errors."""

    def attempt() -> str:
        code, out = _docker(["push", ref], env, log, options.push_timeout_s)
        last = out.strip().splitlines()[-1] if out.strip() else f"exit status {code}"
        if code == 0:
            found = _PUSHED_DIGEST.findall(out)
            if not found:
                raise UserError(f"docker push {ref} reported no digest", where=str(log.path))
            return found[-1]
        # the error is at the end; layer ids and sizes above it must not look like status codes
        kind = classify("\n".join(out.strip().splitlines()[-5:]))
        if kind == "unreachable":
            raise UserError(f"docker push {ref}: the registry {ref.split('/', 1)[0]} is not reachable: {last}",
                            where=str(log.path), fix=UNREACHABLE_FIX)
        if kind == "transient":
            raise TransientError(last)
        if kind == "auth":
            raise UserError(f"the registry refused the push of {ref}: {last}", where=str(log.path),
                            fix="check the credentials' push rights (FLAGREL_REGISTRY_USER/PASSWORD or docker login)")
        raise UserError(f"docker push {ref} failed: {last}", where=str(log.path), fix="read the log")

    return with_retries(attempt, what=f"docker push {ref}", retries=options.retries, backoff_s=options.backoff_s,
                        is_transient=lambda e: isinstance(e, TransientError), on_retry=log)


def _tag_local(image_id: str, ref: str, env: dict[str, str], log: _PushLog) -> None:
    code, out = _docker(["tag", image_id, ref], env, log, 60)
    if code != 0:
        raise UserError(f"docker tag {ref} failed: {out.strip()[-200:]}", where=str(log.path))


def _same_content(client: RegistryClient, tags: ReleaseTags, image: LocalImage, remote_digest: str) -> bool:
    """Is the registry's manifest our image? Known digest from an earlier push, or same config (image id)."""
    if remote_digest in digests_for(image, tags.target.repo_ref):
        return True
    return client.config_digest(tags.target.repository, remote_digest) == image.image_id


def _verify(client: RegistryClient, tags: ReleaseTags, tag: str, want: str, image: LocalImage, *,
            pushed: bool) -> None:
    have = client.manifest_digest(tags.target.repository, tag)
    if have != want:
        raise CheckFailed(f"verification failed: the registry's {tags.target.ref(tag)} is {have}, expected {want}",
                        where=f"HEAD /v2/{tags.target.repository}/manifests/{tag}",
                        fix="another publisher may be racing this one; rerun publish")
    if not pushed:
        return  # nothing was pushed from here: docker has no RepoDigest to compare with
    known = digests_for(image, tags.target.repo_ref)
    if want not in known:
        raise CheckFailed(f"verification failed: docker's RepoDigests for {tags.target.repo_ref} are "
                        f"{sorted(known)}, the registry says {want}", where=image.ref)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_audit(recipe: Recipe, image_id: str) -> ImageContents | None:
    """Show the image's contents and vulnerability count; refuse on the recipe's policy."""
    contents = contents_from(image_id)
    limit = recipe.release.max_vulnerabilities
    if contents is None or not contents.audit:
        if limit is not None:
            raise UserError("no pip-audit report for this image, and the recipe sets a vulnerability limit",
                            where="recipe release.max_vulnerabilities", fix="rebuild it with a build session")
        info("  audit    none (the image was not installed from a lock)")
        return contents
    a = contents.audit
    info(f"  audit    {a['vulnerabilities']} known vulnerabilities; {a['audited']} of {a['packages']} packages "
         f"audited ({a['not_audited']} not found by the advisory service)")
    if limit is not None and (a["vulnerabilities"] > limit or a["not_audited"]):
        raise UserError(f"vulnerability policy: {a['vulnerabilities']} found (limit {limit}), "
                        f"{a['not_audited']} packages not audited", where="recipe release.max_vulnerabilities",
                        fix="update the affected pins (nox -s lock-deps), or raise the limit on purpose")
    return contents


def _copy_reports(image_id: str, dest: Path) -> None:
    found = facts.load(image_id)
    for name in (found.sbom, (found.audit or {}).get("report")) if found else ():
        if name and Path(str(name)).is_file():
            shutil.copy2(str(name), dest / Path(str(name)).name)


def publish(recipe: Recipe, image_ref: str, options: PublishOptions | None = None) -> ReleaseRecord:
    """Push a validated image under its immutable tag and the recipe's moving tags; record and card it.

    Raises UserError (nothing moved) when the image is untested, failed or skipped a check, when the
    immutable tag already names other content, or when the registry refuses us.
    """
    options = options or PublishOptions()
    started, t0 = _now(), time.monotonic()
    with phase(f"Publish: check {recipe.name}"):
        image = inspect_image(image_ref)
        check_labels(recipe, image)
        waivers: list[Waiver] = []
        stored = check_results(recipe, image, accept_untested_op_tests=options.accept_untested_op_tests,
                               waivers=waivers)
        target = resolve_target(recipe, options.registry, options.namespace)
        vllm_version = image.labels.get(L.VLLM_VERSION) or "unknown"
        tags = release_tags(recipe, target, vllm_version=vllm_version, content_key=image.labels[L.CONTENT_KEY])
        info(f"  image    {image_ref} ({image.image_id[:19]}); smoke passed; op-tests "
             + (f"did NOT pass ({waivers[0].status}): accepted with {ACCEPT_UNTESTED_OP_TESTS} "
                f"{waivers[0].reason!r}" if waivers else "passed"))
        info(f"  target   {target.repo_ref} ({target.source})")
        info(f"  tags     {tags.immutable} (immutable); {', '.join(tags.moving) or 'no moving tags'}")

    # Everything the record and card need is gathered (and the card rendered once) before anything is
    # pushed: a broken lock or template must fail here, not after tags have moved.
    draft = ReleaseRecord(
        recipe=recipe.name, vendor=recipe.vendor, model_id=recipe.model.id,
        served_model_name=recipe.serve.served_model_name, image_id=image.image_id,
        content_key=image.labels[L.CONTENT_KEY], source_revision=image.labels.get(L.REVISION, "unknown"),
        registry=target.registry, repository=target.repository, immutable_tag=tags.immutable, digest=None,
        tags=[TagRecord(tag=t, ref=target.ref(t), kind=k, action="would-push")
              for t, k in [(tags.immutable, "immutable"), *((m, "moving") for m in tags.moving)]],
        versions=versions_from(image.labels, recipe.vendor),
        patch_stack=patch_stack_from(image.labels, recipe.vendor), tests=result_records(stored), waivers=waivers,
        host=host_facts(),
        times=Times(started_at=started, finished_at=_now(), push_s=0, verify_s=0,
                    total_s=round(time.monotonic() - t0, 3)),
        dry_run=True,
    )
    with phase("Publish: SBOM and pip-audit of the image's packages"):
        facts.release_reports(image.image_id, recipe.vendor, multinode=recipe.serve.nnodes > 1)
        draft = draft.model_copy(update={"contents": check_audit(recipe, image.image_id)})
    render_card(recipe, draft)
    if options.dry_run:
        info("  dry run: nothing pushed, nothing written")
        return draft

    creds = find_credentials(target.registry)
    log = _PushLog(recipe.name, creds, target.repo_ref)
    info(f"  credentials: {creds.source if creds else 'none found (anonymous)'}")
    stderr_line(f"  log: {log.path}")
    client = RegistryClient(target.registry, creds, retries=options.retries, backoff_s=options.backoff_s,
                            timeout_s=options.timeout_s, log=log)
    with phase(f"Publish: push {tags.immutable_ref}"):
        # fail before touching docker when the registry wants credentials we lack or rejects ours
        client.check_access(target.repository)
        with docker_env(target.registry, creds, retries=options.retries, backoff_s=options.backoff_s,
                        log=log) as env:
            digest, push_s, verify_s, tag_records = _push_all(client, tags, image, env, log, options)
    info(f"  push {push_s:.1f}s, verify {verify_s:.1f}s; digest {digest}")

    record = draft.model_copy(update={
        "digest": digest, "tags": tag_records, "dry_run": False,
        "times": Times(started_at=started, finished_at=_now(), push_s=round(push_s, 3),
                       verify_s=round(verify_s, 3), total_s=round(time.monotonic() - t0, 3)),
    })
    record_path, card_path = write_release(record, render_card(recipe, record))
    _copy_reports(image.image_id, record_path.parent)
    # plain lines: a path wrapped at the terminal width cannot be copied
    stderr_line(f"  record {record_path}")
    stderr_line(f"  card   {card_path}")
    return record


def _push_all(client: RegistryClient, tags: ReleaseTags, image: LocalImage, env: dict[str, str], log: _PushLog,
              options: PublishOptions) -> tuple[str, float, float, list[TagRecord]]:
    """Returns (digest, seconds pushing, seconds querying/verifying, one record per tag)."""
    repo = tags.target.repository
    clock = {"push": 0.0, "verify": 0.0, "last_push": 0.0}
    records: list[TagRecord] = []

    def query(tag: str) -> str | None:
        start = time.monotonic()
        try:
            return client.manifest_digest(repo, tag)
        finally:
            clock["verify"] += time.monotonic() - start

    def push_timed(ref: str) -> str:
        start = time.monotonic()
        try:
            return push(ref, env, log, options)
        finally:
            clock["last_push"] = time.monotonic() - start
            clock["push"] += clock["last_push"]

    def verify(tag: str, want: str, pushed: bool) -> None:
        start = time.monotonic()
        try:
            # RepoDigests as docker reports them after the push
            _verify(client, tags, tag, want, inspect_image(image.image_id), pushed=pushed)
        finally:
            clock["verify"] += time.monotonic() - start

    # 1. the immutable tag: never moved to other content
    existing = query(tags.immutable)
    action: TagAction
    if existing is not None:
        if not _same_content(client, tags, image, existing):
            raise CheckFailed(
                f"immutable tag {tags.immutable_ref} already exists with other content ({existing}); "
                f"refusing to move it",
                where=f"{tags.target.registry} {repo}:{tags.immutable}",
                fix="an immutable tag names one build forever: pull and republish that image, or change the "
                    "inputs (lock, stack, recipe) so the build gets a new content key",
            )
        digest, action = existing, "unchanged"
        info(f"  {tags.immutable}: already in the registry with this content: not pushed")
    else:
        _tag_local(image.image_id, tags.immutable_ref, env, log)
        digest, action = push_timed(tags.immutable_ref), "pushed"
    verify(tags.immutable, digest, pushed=action == "pushed")
    records.append(TagRecord(tag=tags.immutable, ref=tags.immutable_ref, kind="immutable", action=action,
                             digest=digest, verified=True,
                             push_s=round(clock["last_push"], 3) if action == "pushed" else 0.0))
    info(f"  {tags.immutable}: {action}, verified {digest[:19]}")

    # 2. moving tags, only after the immutable one is in place and verified
    for tag in tags.moving:
        ref = tags.target.ref(tag)
        clock["last_push"] = 0.0
        before = query(tag)
        if before == digest:
            tag_action: TagAction = "unchanged"
        else:
            _tag_local(image.image_id, ref, env, log)
            pushed = push_timed(ref)
            if pushed != digest:
                raise CheckFailed(f"docker pushed {ref} as {pushed}, but {tags.immutable} is {digest}",
                                where=str(log.path), fix="rerun publish; report it if it persists")
            tag_action = "moved" if before else "pushed"
        verify(tag, digest, pushed=tag_action != "unchanged")
        records.append(TagRecord(tag=tag, ref=ref, kind="moving", action=tag_action, digest=digest,
                                 previous_digest=before if before != digest else None, verified=True,
                                 push_s=round(clock["last_push"], 3)))
        was = f" (was {before[:19]})" if tag_action == "moved" and before else ""
        info(f"  {tag}: {tag_action}{was}, verified")
    return digest, clock["push"], clock["verify"], records

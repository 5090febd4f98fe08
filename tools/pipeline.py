"""The build sessions' pipeline: plan -> patched source -> context -> image -> validation -> release.

Each stage is its own module; this one only orders them and records what was skipped and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from tools.core.errors import CheckFailed, UserError
from tools.core.lock import DebootstrapBase, LoadedLock
from tools.core.recipe import Recipe
from tools.mech import host as engine
from tools.mech.console import info, phase
from tools.stages import patches, results, source, space
from tools.stages.build import BuiltImage, build_image
from tools.stages.context import BuildContext, prepare_context
from tools.stages.plan import BuildOptions, BuildPlan, plan_for


@dataclass
class ReleaseReport:
    recipe: str
    image: BuiltImage | None = None
    checks: dict[str, str] = field(default_factory=dict)
    ok: bool = True

    def summary(self) -> str:
        lines = [f"recipe   {self.recipe}"]
        if self.image:
            state = "reused (content key matched)" if self.image.skipped else "built"
            lines.append(f"image    {self.image.ref} {self.image.image_id[:19]} {state}")
            lines.append(f"content  {self.image.content_key}")
        lines += [f"{name:<8} {outcome}" for name, outcome in self.checks.items()]
        return "\n".join(lines)


def _record_skip(recipe: Recipe, image_id: str, kind: results.Kind, reason: str) -> None:
    results.store(results.result_for(recipe, kind, image_id, passed=False, skipped_reason=reason))


def context_for(plan: BuildPlan, loaded: LoadedLock, recipe_file: Path, options: BuildOptions) -> BuildContext:
    """Pristine tree + the vendor's patched tree + its stamp -> the build context. A stack with encrypted
    patches is patched in a private tree that is deleted once its files are in the context."""
    pristine = source.fetch_source(loaded.lock)
    stamp = patches.stamp_module_text(patches.stack_info(plan.vendor))
    with patches.patched_source(plan.vendor, lock=loaded.lock) as patched:
        return prepare_context(plan, loaded, recipe_file, options, pristine=pristine.path, patched=patched,
                               stamp_text=stamp)


def _passed_before(recipe: Recipe, image: BuiltImage) -> dict[str, str]:
    """For an image reused by content key (which covers the recipe's bytes, so its checks are the same):
    this recipe's stored results, when both checks passed with this configuration and these checks' versions;
    else {} and the checks run."""
    if not image.skipped:
        return {}
    stored = {kind: results.load(image.image_id, recipe.name, kind) for kind in results.KINDS}
    if all(r is not None and r.passed and results.mismatch(r, recipe, image.image_id) is None
           for r in stored.values()):
        return {kind: f"passed (stored {r.recorded_at}; --revalidate reruns)" for kind, r in stored.items() if r}
    return {}


def _facts(ctx: BuildContext, image: BuiltImage, loaded: LoadedLock) -> BuiltImage:
    """What is in the image, read from it; a locked image must hold exactly its lock. A new build gets
    those facts as labels (a config-only image that replaces it under the same tags)."""
    from tools.mech import docker
    from tools.stages import facts, pylock
    from tools.stages.render import is_locked

    locked = pylock.load(ctx.plan.vendor) if is_locked(ctx.plan) else None
    engine_wheel = loaded.lock.vendors[ctx.plan.vendor].engine_wheel
    found = facts.collect(image.key_ref, image.image_id, locked, multinode=ctx.plan.nnodes > 1,
                          engine_name=engine_wheel.name if engine_wheel else "vllm")
    lock_state = {True: "equal to the lock", None: "no lock"}.get(found.lock_matches, "?")
    info(f"  {len(found.distributions)} Python distributions ({lock_state}); Python {found.python}, "
         f"torch {found.torch}, engine {found.engine}; {found.os}")
    if image.skipped:  # found by content key, which only finds images that carry their facts labels
        return image
    labelled = docker.relabel(image.key_ref, facts.labels(found, ctx.plan.vendor), [image.ref, image.key_ref])
    facts.move(found, labelled)
    space.hold(labelled)
    docker.remove_image(image.image_id)
    info(f"  facts labelled: image {labelled[:19]} tagged {image.ref} and {image.key_ref}")
    return replace(image, image_id=labelled)


def built_image(ctx: BuildContext, loaded: LoadedLock, options: BuildOptions, *, revision: str) -> BuiltImage:
    """The image of a context, finished: built (or found by content key), its installed packages checked
    against the lock, and its facts in its labels."""
    with phase(f"Image build ({ctx.plan.install_mode})"):
        image = build_image(ctx, options, revision=revision)
    with phase("Facts from the image (its packages against the lock)"):
        return _facts(ctx, image, loaded)


def run_release(recipe_arg: str, vendor: str, options: BuildOptions, *, skip_smoke: str | None,
                skip_op_tests: str | None, push: bool, local_registry: bool, revision: str,
                revalidate: bool = False) -> ReleaseReport:
    with phase("Plan"):
        plan, loaded, recipe, recipe_file = plan_for(recipe_arg, vendor, options)
        print(plan.describe())
    report = ReleaseReport(recipe=recipe.name)
    if plan.base_unpinned:
        raise UserError(f"the {vendor} base image {plan.base_ref} has no digest in the lock",
                        where=f"versions.lock -> vendors.{vendor}.base",
                        fix=f"{plan.base_unpinned.strip()} (or pass --base-image REF@sha256:...)")

    with phase("Host: Docker engine, BuildKit, base image"):
        facts = engine.ensure_engine()
        info(f"  engine {facts.server_version}; {facts.buildx_version}")
        base = loaded.lock.vendors[vendor].base
        if not plan.base_overridden and isinstance(base, DebootstrapBase):
            engine.ensure_debootstrap_base(base)

    with phase("Patched source and build context"):
        ctx = context_for(plan, loaded, recipe_file, options)
        info(f"  {ctx.directory} ({ctx.plan.install_mode}); content key {ctx.content_key[:12]}")

    image = built_image(ctx, loaded, options, revision=revision)
    report.image = image

    passed_before = {} if revalidate else _passed_before(recipe, image)
    if passed_before:
        info("  nothing changed: this image already passed smoke and op tests; skipping them")
        report.checks.update(passed_before)
    elif skip_smoke:
        _record_skip(recipe, image.image_id, "smoke", skip_smoke)
        report.checks["smoke"] = f"skipped: {skip_smoke}"
    else:
        from tools.stages.smoke import smoke

        smoke_report = smoke(recipe, image.key_ref)
        report.checks["smoke"] = "passed" if smoke_report.passed else "FAILED"
        report.ok &= smoke_report.passed
    if passed_before:
        pass
    elif skip_op_tests:
        _record_skip(recipe, image.image_id, "op-tests", skip_op_tests)
        report.checks["op-tests"] = f"skipped: {skip_op_tests}"
    else:
        from tools.stages.op_tests import run_op_tests

        op_ok = run_op_tests(recipe, image=image.key_ref)
        report.checks["op-tests"] = "passed" if op_ok else "FAILED"
        report.ok &= op_ok

    if push:
        if not report.ok:
            raise CheckFailed("validation failed: nothing was pushed", fix="fix the failures above and rebuild")
        from tools.stages.publish import publish

        if local_registry:
            from tools.mech.local_registry import ensure_local_registry

            os.environ.update(ensure_local_registry().env())

        record = publish(recipe, image.key_ref)
        report.checks["publish"] = f"pushed: {record}"
    return report

"""Model cards and release records, rendered from recipes (no docker needed)."""

from __future__ import annotations

import json
import re
import shlex

import jinja2
import pytest
import yaml

from tools.core.profiles import docker_run_flags
from tools.core.recipe import available, engine_arg_value, load_recipe
from tools.stages import card
from tools.stages.flagscale import VLLM_SPECIFIC
from tools.stages.record import (
    HostFacts,
    PatchFile,
    PatchStack,
    ReleaseRecord,
    ResultRecord,
    TagRecord,
    Times,
    Versions,
    load_record,
    release_dir,
    write_release,
)

DIGEST = "sha256:" + "d" * 64


def sample_record(recipe_name: str, *, digest: str | None = DIGEST) -> ReleaseRecord:
    recipe, _ = load_recipe(recipe_name)
    immutable = f"{recipe.name}-{recipe.vendor}-0.32.0-0123456789ab"
    repo, registry = "flagrelease/" + recipe.release.image_name, "registry.example.com"
    tags = [TagRecord(tag=immutable, ref=f"{registry}/{repo}:{immutable}", kind="immutable", action="pushed",
                      digest=digest, verified=True)]
    tags += [TagRecord(tag=t, ref=f"{registry}/{repo}:{t}", kind="moving", action="pushed", digest=digest,
                       verified=True) for t in recipe.release.tags]
    return ReleaseRecord(
        recipe=recipe.name, vendor=recipe.vendor, model_id=recipe.model.id,
        served_model_name=recipe.serve.served_model_name, image_id="sha256:" + "1" * 64,
        content_key="0123456789ab" + "0" * 52, source_revision="abc123", registry=registry, repository=repo,
        immutable_tag=immutable, digest=digest, tags=tags,
        versions=Versions(vllm="0.32.0", vllm_commit="0123456789abcdef", flaggems="5.0.2", torch="2.13.0+cpu",
                          python="3.11", base_image="flagrelease-base/debian:bookworm", install_mode="wheel-overlay",
                          lock_sha256="f" * 64, lock_matches_image=True, flagscale="0.8.0"),
        patch_stack=PatchStack(stack_id="abcdef012345", stack_hash="abcdef012345" + "0" * 52,
                               files=[PatchFile(path="vllm/0001-x.patch", sha256="e" * 64)], files_source="test"),
        tests={"smoke": ResultRecord(kind="smoke", passed=True, recorded_at="2026-11-22T10:00:00+00:00"),
               "op-tests": ResultRecord(kind="op-tests", passed=True, recorded_at="2026-11-22T10:05:00+00:00")},
        host=HostFacts(hostname="h", os="Debian 12", kernel="6.1", arch="x86_64", cpu_count=2,
                       docker_client="20.10.24", docker_server="20.10.24", python="3.11.7"),
        times=Times(started_at="2026-11-22T10:06:00+00:00", finished_at="2026-11-22T10:06:05+00:00", push_s=3.0,
                    verify_s=0.1, total_s=5.0),
    )


def _block(text: str, after: str, lang: str) -> str:
    """The first fenced code block of `lang` after the heading `after`."""
    start = text.index(after)
    match = re.search(rf"```{lang}\n(.*?)```", text[start:], re.S)
    assert match, f"no ```{lang} block after {after!r}"
    return match.group(1)


@pytest.mark.parametrize("name", available())
def test_card_has_the_release_note_sections(name):
    recipe, _ = load_recipe(name)
    record = sample_record(name)
    text = card.render_card(recipe, record)
    for heading in ("# Introduction", "# User Guide", "**Environment Setup**", "### Download FlagOS Image",
                    "### Start the inference service", "# Service Invocation", "# Frequently Asked Questions",
                    "# License"):
        assert heading in text, heading
    assert recipe.card.title in text
    assert f"docker pull {record.pull_ref}" in text
    assert f"docker pull {record.digest_ref}" in text
    assert f'model = "{recipe.serve.served_model_name}"' in text
    assert f"http://<server_ip>:{recipe.serve.port}/v1/" in text
    for question in recipe.card.faq:
        assert question["q"] in text
    # the environment table carries the recipe's rows and the record's versions
    for key, value in recipe.card.environment.items():
        assert f"| {card.md(key)} | {card.md(value)} |" in text
    assert "| vLLM | Version: 0.32.0 (commit 0123456789ab) |" in text
    assert "| FlagGems | Version: 5.0.2 |" in text
    assert "{{" not in text and "{%" not in text


@pytest.mark.parametrize("name", available())
def test_docker_run_matches_the_vendor_profile(name):
    recipe, _ = load_recipe(name)
    record = sample_record(name)
    text = card.render_card(recipe, record)
    heading = "### Start the container" if recipe.serve.launcher == "flagscale" else "### Start the inference service"
    command = _block(text, heading, "bash").split("\n\ndocker logs")[0]
    loops = card._device_loops(recipe.vendor)
    assert bool(loops) == (recipe.vendor == "ascend")
    for loop in loops:
        assert loop in command and "/dev/davinci[0-9]*" in loop
        command = command.replace(loop, "")
    tokens = shlex.split(command.replace("\\\n", " "))
    assert tokens[:2] == ["docker", "run"]
    image_at = tokens.index(record.pull_ref)
    flags = tokens[2:image_at]
    # every flag of the profile, in the profile's order (devices enumerated on a host are the exception)
    want = card.run_flags(recipe)
    it = iter(flags)
    assert all(any(f == g for g in it) for f in want), (want, flags)
    profile = [f for f in docker_run_flags(recipe.vendor, shm_size=recipe.run.shm_size)
               if not re.fullmatch(r"/dev/davinci[0-9]+", f)]
    assert set(profile) - {"--device"} <= set(flags)
    for mount in recipe.run.mounts:
        assert mount in flags
    if recipe.model.host_path:
        assert f"{recipe.model.host_path}:{recipe.model.path}:ro" in flags
    for key in {**recipe.serve.env, **recipe.run.env}:
        assert any(f.startswith(f"{key}=") for f in flags), key
    if recipe.serve.launcher == "flagscale":
        # the container idles; `flagscale serve` starts the engine in it
        assert tokens[image_at - 2:image_at] == ["--entrypoint", "sleep"] and tokens[image_at + 1:] == ["infinity"]
        return
    # after the image: the engine arguments the smoke test uses, serving on all interfaces
    engine = tokens[image_at + 1:]
    assert engine[:2] == ["--model", recipe.model.path]
    assert engine[engine.index("--served-model-name") + 1] == recipe.serve.served_model_name
    assert engine[engine.index("--host") + 1] == "0.0.0.0"


def test_booleans_in_env_become_numbers_as_vllm_reads_them():
    recipe, _ = load_recipe("robobrain2-7b-fp8dynamic-nvidia")
    command = card.docker_run_command(recipe, "img")
    assert "-e USE_FLAGGEMS=1" in command and "True" not in command


@pytest.mark.parametrize("name", available())
def test_serve_yaml_has_flagscale_shape(name):
    recipe, _ = load_recipe(name)
    text = card.render_card(recipe, sample_record(name))
    size = recipe.serve.flagscale.size
    data = yaml.safe_load(_block(text, f"`serve/{size}.yaml`:", "yaml"))
    assert isinstance(data, list) and len(data) == 1
    entry = data[0]
    assert entry["serve_id"] == "vllm_model" and entry["engine"] == "vllm"
    args = entry["engine_args"]
    assert args["model"] == recipe.model.path
    assert args["served_model_name"] == recipe.serve.served_model_name
    assert args["port"] == recipe.serve.port
    # vLLM-only settings sit under engine_args_specific.vllm, as in FlagScale's ernie45/kimi_k2 examples
    specific = entry.get("engine_args_specific", {}).get("vllm", {})
    for key, value in recipe.serve.engine_args.items():
        # a mapping (limit_mm_per_prompt) is one JSON text: FlagScale would flatten a nested mapping
        assert (specific if key in VLLM_SPECIFIC else args)[key] == engine_arg_value(value)


def test_benchmarks_table_when_the_recipe_has_one():
    recipe, _ = load_recipe("robobrain2-7b-fp8dynamic-nvidia")
    text = card.render_card(recipe, sample_record(recipe.name))
    assert "| Metrics | RoboBrain2.0-7B-H100-CUDA | RoboBrain2.0-7B-FP8Dynamic-FlagOS |" in text
    assert "| SAT | 75.33 | 72.0 |" in text
    tiny, _ = load_recipe("tiny-cpu")
    assert "# Evaluation Results" not in card.render_card(tiny, sample_record("tiny-cpu"))


def test_tiny_model_is_made_locally_and_mounted():
    recipe, _ = load_recipe("tiny-cpu")
    text = card.render_card(recipe, sample_record("tiny-cpu"))
    assert "make_tiny_model" in text
    # the run command mounts it where the engine is told to look, with the variable left to expand
    assert f'-v "$TINY_MODEL_DIR":{recipe.model.path}:ro' in text
    assert f"--model {recipe.model.path}" in text


def test_template_is_strict_about_missing_values():
    recipe, _ = load_recipe("tiny-cpu")
    ctx = card.context(recipe, sample_record("tiny-cpu"))
    del ctx["served_model_name"]
    with pytest.raises(jinja2.UndefinedError):
        card.environment().get_template("model_card.md.j2").render(**ctx)


def test_record_and_card_are_written_under_build_releases(build_dir):
    recipe, _ = load_recipe("tiny-cpu")
    record = sample_record("tiny-cpu")
    record_path, card_path = write_release(record, card.render_card(recipe, record))
    assert record_path.parent == release_dir(record.registry, record.repository, record.immutable_tag)
    assert record_path.parent == (build_dir / "releases" / "registry.example.com" / "flagrelease" / "flagrelease"
                                  / record.immutable_tag)
    assert load_record(record_path) == record
    data = json.loads(record_path.read_text())
    for key in ("recipe", "vendor", "versions", "patch_stack", "tags", "tests", "host", "times"):
        assert key in data
    assert data["tags"][0]["digest"] == DIGEST
    assert card_path.read_text().startswith("# Introduction")


def test_record_prints_as_one_line():
    record = sample_record("tiny-cpu")
    assert str(record) == (f"registry.example.com/flagrelease/flagrelease:{record.immutable_tag} @ {DIGEST} "
                           f"(flagrelease_cpu_tiny_llama)")


@pytest.mark.parametrize("name", available())
def test_faq_answers_with_this_releases_own_names(name):
    recipe, _ = load_recipe(name)
    text = card.render_card(recipe, sample_record(name))
    section = text.split("# Frequently Asked Questions", 1)[1].split("\n# ", 1)[0]
    questions = re.findall(r"^### Q\d+: (.+)$", section, re.M)
    assert len(questions) == len(set(questions)), questions
    # its port and no other, its container, its log command, its model folder
    assert set(re.findall(r"port (\d+)", section)) == {str(recipe.serve.port)}
    assert f"`{card.log_command(recipe)}`" in section and "flagos" in card.log_command(recipe)
    assert f"mounted at `{recipe.model.path}` in the container `flagos`" in section
    assert f"http://<server_ip>:{recipe.serve.port}/v1/models" in section
    if recipe.serve.launcher == "flagscale":
        fs_log = card.flagscale_log(recipe)
        assert fs_log.startswith(f"/tmp/flagscale/{card.flagscale.exp_name(recipe)}/") and fs_log in section
    if recipe.serve.image_limit() is not None:
        assert f"Up to {recipe.serve.image_limit()} (`limit_mm_per_prompt`)" in section
    assert ("A worker machine never joins" in section) == (recipe.serve.nnodes > 1)


def test_flagscale_containers_start_with_an_init():
    recipe, _ = load_recipe("qwen2.5-vl-32b-instruct-nvidia")
    assert card.docker_run_command(recipe, "img").startswith("docker run --detach --init --name flagos")
    tiny, _ = load_recipe("tiny-cpu")
    assert "--init" not in card.docker_run_command(tiny, "img")

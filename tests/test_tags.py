"""Release tags and where they point: naming rules and configuration precedence (no docker needed)."""

from __future__ import annotations

import pytest

from tools.core.errors import UserError
from tools.core.recipe import load_recipe
from tools.stages.tags import immutable_tag, looks_immutable, release_tags, resolve_target

KEY = "5f57e4dc6f99" + "ab" * 26


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("FLAGREL_REGISTRY", "FLAGREL_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    # no configuration file unless a test writes one
    monkeypatch.setenv("FLAGREL_CONFIG", str(tmp_path / "absent.toml"))
    return tmp_path


def test_immutable_tag_names_recipe_vendor_version_and_short_key():
    assert immutable_tag("tiny-cpu", "cpu", "0.32.0", KEY) == "tiny-cpu-cpu-0.32.0-5f57e4dc6f99"


def test_immutable_tag_makes_local_versions_tag_safe():
    # '+' is not allowed in a docker tag
    assert immutable_tag("r", "nvidia", "0.32.0+cu130", KEY) == "r-nvidia-0.32.0_cu130-5f57e4dc6f99"


@pytest.mark.parametrize("key", ["", "xyz", "12345"])
def test_immutable_tag_needs_a_hex_content_key(key):
    with pytest.raises(UserError, match="content key"):
        immutable_tag("tiny-cpu", "cpu", "0.32.0", key)


def test_immutable_tag_too_long_is_refused():
    with pytest.raises(UserError, match="not a valid docker tag"):
        immutable_tag("r" * 64, "nvidia", "1." * 30 + "0", KEY)


def test_release_tags_full_refs(clean_env):
    recipe, _ = load_recipe("robobrain2-7b-fp8dynamic-nvidia")
    target = resolve_target(recipe, "registry.example.com:5000", "flagrelease")
    tags = release_tags(recipe, target, vllm_version="0.32.0", content_key=KEY)
    assert tags.immutable_ref == (
        "registry.example.com:5000/flagrelease/flagrelease:robobrain2-7b-fp8dynamic-nvidia-nvidia-0.32.0-5f57e4dc6f99")
    assert tags.moving_refs == (
        "registry.example.com:5000/flagrelease/flagrelease:flagrelease_nv_robobrain2_7b_fp8dynamic",)


def test_moving_tag_shaped_like_an_immutable_one_is_refused(clean_env):
    recipe, _ = load_recipe("tiny-cpu")
    bad = recipe.model_copy(update={"release": recipe.release.model_copy(
        update={"tags": ("tiny-cpu-cpu-0.31.0-0123456789ab",)})})
    target = resolve_target(recipe, "r.example.com", "")
    with pytest.raises(UserError, match="shape of an immutable"):
        release_tags(bad, target, vllm_version="0.32.0", content_key=KEY)
    assert looks_immutable("tiny-cpu-cpu-0.32.0-5f57e4dc6f99", "tiny-cpu", "cpu")
    assert not looks_immutable("flagrelease_cpu_tiny_llama", "tiny-cpu", "cpu")


def test_registry_is_required(clean_env):
    recipe, _ = load_recipe("tiny-cpu")
    with pytest.raises(UserError) as info:
        resolve_target(recipe)
    assert "FLAGREL_REGISTRY" in info.value.render() and "--registry" in info.value.render()


def test_precedence_cli_then_env_then_config_file(clean_env, monkeypatch):
    recipe, _ = load_recipe("tiny-cpu")
    config = clean_env / "flagrelease.toml"
    config.write_text('[publish]\nregistry = "config.example.com"\nnamespace = "fromconfig"\n')
    monkeypatch.setenv("FLAGREL_CONFIG", str(config))
    target = resolve_target(recipe)
    assert (target.registry, target.namespace) == ("config.example.com", "fromconfig")
    monkeypatch.setenv("FLAGREL_REGISTRY", "env.example.com:5000")
    monkeypatch.setenv("FLAGREL_NAMESPACE", "fromenv")
    target = resolve_target(recipe)
    assert (target.registry, target.namespace) == ("env.example.com:5000", "fromenv")
    assert "FLAGREL_REGISTRY" in target.source
    target = resolve_target(recipe, "cli.example.com", "fromcli/team")
    assert target.ref("x") == "cli.example.com/fromcli/team/flagrelease:x"


def test_empty_namespace_puts_the_image_at_top_level(clean_env):
    recipe, _ = load_recipe("tiny-cpu")
    target = resolve_target(recipe, "127.0.0.1:5000", "")
    assert target.repository == "flagrelease" and target.ref("t") == "127.0.0.1:5000/flagrelease:t"


@pytest.mark.parametrize(("registry", "namespace", "message"), [
    ("https://r.example.com", "", "URL scheme"),
    ("r example", "", r"HOST\[:PORT\]"),
    ("r.example.com", "Bad_NS", "namespace"),
    ("r.example.com", "a//b", "namespace"),
])
def test_bad_targets_are_refused(clean_env, registry, namespace, message):
    recipe, _ = load_recipe("tiny-cpu")
    with pytest.raises(UserError, match=message):
        resolve_target(recipe, registry, namespace)


@pytest.mark.parametrize(("registry", "loopback"), [
    ("127.0.0.1:5000", True), ("127.5.0.1", True), ("localhost:5000", True),
    ("registry.example.com", False), ("10.0.0.1:5000", False),
])
def test_loopback_registries_use_plain_http(clean_env, registry, loopback):
    recipe, _ = load_recipe("tiny-cpu")
    assert resolve_target(recipe, registry, "").is_loopback is loopback

"""The tiny vision-language model (made inside the engine image) and the image smoke checks."""

from __future__ import annotations

import ast
import json
import struct
import zlib
from pathlib import Path

import pytest

from tools.core.errors import UserError
from tools.core.recipe import load_recipe
from tools.stages import tinyvl, tinyvl_program
from tools.stages.smoke_checks import image_content, png

VL_IMAGE = "flagrelease-local/tiny-vl-cpu:latest"


# ---- no Docker needed -------------------------------------------------------------------------------

def _fake_maker(calls: list[str], broken: bool = False):
    def run(image: str, out: Path) -> None:
        calls.append(image)
        for name in tinyvl.EXPECTED:
            if not (broken and name == "model.safetensors"):
                (out / name).write_text(f"{name} from {image}\n")
        if broken:
            raise UserError("making failed")
    return run


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    ids = {"img:1": "sha256:" + "1" * 64, "img:2": "sha256:" + "2" * 64}
    monkeypatch.setattr(tinyvl.docker, "image_id", lambda ref: ids[ref])
    return ids


def test_made_once_then_found_by_image_and_program(tmp_path: Path, fake_docker, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tinyvl, "_run_program", _fake_maker(calls))
    first = tinyvl.make_tiny_vl_model("img:1", tmp_path)
    assert first.made and first.path.name.startswith("tiny-qwen2.5-vl-") and calls == ["img:1"]
    assert first.path.name == f"tiny-qwen2.5-vl-{tinyvl.content_hash(first.path)[:16]}"
    again = tinyvl.make_tiny_vl_model("img:1", tmp_path)
    assert (again.path, again.made, calls) == (first.path, False, ["img:1"])
    # another image (its own transformers/torch) makes it again
    other = tinyvl.make_tiny_vl_model("img:2", tmp_path)
    assert other.made and calls == ["img:1", "img:2"] and other.path != first.path
    # nothing half-written is left beside the models
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_damaged_cached_model_is_made_again(tmp_path: Path, fake_docker, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tinyvl, "_run_program", _fake_maker(calls))
    first = tinyvl.make_tiny_vl_model("img:1", tmp_path)
    (first.path / "config.json").write_text("{}")
    again = tinyvl.make_tiny_vl_model("img:1", tmp_path)
    assert again.made and calls == ["img:1", "img:1"]


def test_a_failed_making_leaves_nothing(tmp_path: Path, fake_docker, monkeypatch) -> None:
    monkeypatch.setattr(tinyvl, "_run_program", _fake_maker([], broken=True))
    with pytest.raises(UserError):
        tinyvl.make_tiny_vl_model("img:1", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_the_key_follows_the_program_and_the_image() -> None:
    assert tinyvl.input_key("sha256:a") != tinyvl.input_key("sha256:b")
    assert tinyvl.input_key("sha256:a") == tinyvl.input_key("sha256:a")


def test_the_program_needs_nothing_of_the_host_package() -> None:
    tree = ast.parse(tinyvl.PROGRAM.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "tools" not in imported
    assert {"torch", "transformers", "tokenizers"} <= imported


def test_chat_template_places_each_image() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(tinyvl_program.CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "image_url"},
                                               {"type": "text", "text": "Two?"}]}],
        add_generation_prompt=True)
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == f"<|im_start|>user\n{pad}{pad}Two?<|im_end|>\n<|im_start|>assistant\n"


def test_at_most_sixteen_tokens_an_image_and_head_dim_64() -> None:
    per_token = (tinyvl_program.VISION["patch_size"] * tinyvl_program.VISION["spatial_merge_size"]) ** 2
    assert tinyvl_program.MAX_PIXELS // per_token == 16
    # two images and a prompt fit the recipe's max_model_len
    recipe, _ = load_recipe("tiny-vl-cpu")
    assert recipe.serve.image_limit() == 2 and 2 * 18 + 64 < recipe.serve.engine_args["max_model_len"]
    text, vision = tinyvl_program.TEXT, tinyvl_program.VISION
    assert text["hidden_size"] // text["num_attention_heads"] == vision["hidden_size"] // vision["num_heads"] == 64
    assert sum(tinyvl_program.MROPE_SECTION) * 2 == 64


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + length]
        (crc,) = struct.unpack(">I", data[i + 8 + length:i + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        i += 12 + length
    return out


def test_png_is_a_real_rgb_image() -> None:
    chunks = _chunks(png(64, 48, seed=1))
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (width, height, depth, colour) == (64, 48, 8, 2)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == 48 * (1 + 64 * 3) and raw[0] == 0
    assert png(64, 48, seed=1) != png(64, 48, seed=2)


def test_image_content_is_openai_chat_parts() -> None:
    parts = image_content("What is it?", 2)
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert parts[0] != parts[1] and parts[2]["text"] == "What is it?"


# ---- in the built image ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vl_image(debian_base) -> str:
    """The real tiny-vl-cpu image, built once per run (a no-op when its content key already exists)."""
    from conftest import build_recipe

    build_recipe("tiny-vl-cpu", "cpu")
    return VL_IMAGE


@pytest.mark.e2e
@pytest.mark.docker
def test_made_in_the_image_deterministically(tiny_vl_image: str, tmp_path: Path) -> None:
    from tools.mech.docker import leftover_containers

    first = tinyvl.make_tiny_vl_model(tiny_vl_image, tmp_path / "a")
    second = tinyvl.make_tiny_vl_model(tiny_vl_image, tmp_path / "b")
    assert first.made and second.made
    assert first.path.name == second.path.name, "the same program in the same image wrote other bytes"
    assert {p.name for p in first.path.iterdir()} == set(tinyvl.EXPECTED)
    assert 1_000_000 < first.size_bytes < 5_000_000
    config = json.loads((first.path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert config["image_token_id"] == 262 and config["vision_config"]["depth"] == 2
    assert leftover_containers(tinyvl.NAME_PREFIX) == []


@pytest.mark.e2e
@pytest.mark.docker
def test_smoke_sends_an_image_and_one_too_many(tiny_vl_image: str, build_dir: Path) -> None:
    from tools.mech.docker import leftover_containers
    from tools.stages.smoke import NAME_PREFIX, smoke

    recipe, _ = load_recipe("tiny-vl-cpu")
    report = smoke(recipe, tiny_vl_image)
    print(report.summary())
    assert {c.name: c.passed for c in report.checks} == {
        "models": True, "chat": True, "stream": True, "image": True, "over-limit": True, "stamp": True}
    over = next(c for c in report.checks if c.name == "over-limit")
    assert "3 images (limit 2): 400" in over.detail and "still serving" in over.detail
    assert leftover_containers(f"{NAME_PREFIX}-{recipe.name}") == []

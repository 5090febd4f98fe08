"""The tiny model: files, safetensors layout, tokenizer, chat template, determinism. No Docker needed."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("numpy")

from tools import PROJECT_ROOT
from tools.stages import tinymodel as tm

EXPECTED_FILES = {"config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                  "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.make_tiny_model(tmp_path_factory.mktemp("models"))


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return size, json.loads(raw[8:8 + size])


def test_files_and_sizes(model: Path) -> None:
    assert {p.name for p in model.iterdir()} == EXPECTED_FILES
    assert model.name.startswith("tiny-llama-")
    total = sum(p.stat().st_size for p in model.iterdir())
    # 360,448 bf16 parameters (tied embeddings) = 720,896 bytes of weights, plus small JSON files
    assert 700_000 < total < 800_000
    config = json.loads((model / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_safetensors_header(model: Path) -> None:
    path = model / "model.safetensors"
    size, header = _header(path)
    assert (8 + size) % 8 == 0, "data must start 8-byte aligned"
    assert header.pop("__metadata__") == {"format": "pt"}
    offsets = sorted((spec["data_offsets"], name) for name, spec in header.items())
    end = 0
    for (start, stop), name in offsets:
        spec = header[name]
        assert spec["dtype"] == "BF16"
        count = 1
        for dim in spec["shape"]:
            count *= dim
        assert start == end and stop - start == 2 * count, name
        end = stop
    assert path.stat().st_size == 8 + size + end
    assert header["model.layers.0.self_attn.k_proj.weight"]["shape"] == [64, 128]
    assert header["model.embed_tokens.weight"]["shape"] == [512, 128]
    assert "lm_head.weight" not in header  # tied to the embedding
    # norms are ones: bf16 1.0 is 0x3F80
    start, stop = header["model.norm.weight"]["data_offsets"]
    data = path.read_bytes()[8 + size + start: 8 + size + stop]
    assert set(struct.unpack(f"<{len(data) // 2}H", data)) == {0x3F80}


def test_safetensors_library_reads_it(model: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    if not hasattr(safetensors, "deserialize"):
        pytest.skip("this safetensors has no deserialize()")
    tensors = dict(safetensors.deserialize((model / "model.safetensors").read_bytes()))
    assert tensors["model.layers.1.mlp.down_proj.weight"]["shape"] == [128, 256]
    assert tensors["model.layers.1.mlp.down_proj.weight"]["dtype"].lower() == "bf16"


def test_bf16_rounding() -> None:
    import numpy as np

    bits = tm._bf16_bits(np.array([1.0, -2.0, 0.0, 1.00390625, 3.14159], dtype=np.float32))
    # 1.00390625 is exactly halfway between two bf16 values: ties go to the even one (1.0)
    assert list(bits) == [0x3F80, 0xC000, 0x0000, 0x3F80, 0x4049]


def test_tokenizer_round_trips(model: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert tok.get_vocab_size() == 512 == json.loads((model / "config.json").read_text())["vocab_size"]
    for text in ["Say hello.", "  leading spaces\tand tabs\n", "ünïcödé 🙂 中文", ""]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    # the chat markers are single special tokens, never split
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == tok.token_to_id("<|im_start|>") and tok.token_to_id("<|im_end|>") in ids
    config = json.loads((model / "config.json").read_text())
    assert config["eos_token_id"] == tok.token_to_id("<|im_end|>")
    assert config["bos_token_id"] == tok.token_to_id("<|endoftext|>")


def test_chat_template_renders(model: Path) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    cfg = json.loads((model / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert cfg["eos_token"] == "<|im_end|>" and cfg["bos_token"] == "<|endoftext|>"
    # the same jinja settings transformers uses for chat templates
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(cfg["chat_template"]).render(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
    )
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n")


def test_transformers_loads_it_when_available(model: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(model))
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_deterministic_and_reused(tmp_path: Path) -> None:
    first = tm.make_tiny_model(tmp_path / "a")
    again = tm.make_tiny_model(tmp_path / "a")
    other = tm.make_tiny_model(tmp_path / "b")
    assert first == again
    assert first.name == other.name
    assert tm.content_hash(first) == tm.content_hash(other)
    for name in EXPECTED_FILES:
        assert (first / name).read_bytes() == (other / name).read_bytes(), name
    # no temporary directories are left behind
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.name]


def test_default_location_is_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGREL_CACHE", str(tmp_path))
    path = tm.make_tiny_model()
    assert path.parent == tmp_path / "models"


def test_needs_neither_torch_nor_transformers(tmp_path: Path) -> None:
    code = ("import sys; from tools.stages.tinymodel import make_tiny_model; make_tiny_model(sys.argv[1]); "
            "bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=PROJECT_ROOT)

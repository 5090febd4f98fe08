"""A tiny random Llama the project makes itself, so a smoke serve needs no download and no hub.

Written with numpy and `tokenizers` only: the host needs neither torch nor transformers. The weights are
random (fixed seed) and the output is gibberish; what matters is that a real engine loads the config,
tokenizer, chat template and safetensors weights through its normal code paths.

The directory is named by a hash of its content, written to a temporary directory first and renamed
into place, so a half-written model is never picked up and two concurrent makers agree on the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from tools.core import paths
from tools.core.errors import UserError

# Dimensions: head_dim 64 is the smallest the vLLM CPU attention backend accepts (16 fails with
# "Unsupported CPU attention configuration"); the rest is as small as a 2-layer GQA Llama gets.
VOCAB_SIZE = 512
HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 2
KV_HEADS = 1
HEAD_DIM = HIDDEN // HEADS
MAX_POSITIONS = 256
SEED = 20261122

BOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (BOS, IM_START, IM_END)

# ChatML: every message framed by markers; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training text for the tokenizer: enough distinct byte pairs to fill all 512 entries.
_CORPUS = """\
FlagRelease builds images for a chip and a model: a pinned inference engine with the vendor's patches,
an operator library, and a model served through an OpenAI compatible API. Every image is proven by a
smoke serve before it is pushed. The quick brown fox jumps over the lazy dog; pack my box with five dozen
liquor jugs. Hello, world! How are you today? I am fine, thank you. Say hello to the assistant.
The user asks a question and the assistant answers it. The system prompt sets the rules of the chat.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 512 1024 2048 4096. Punctuation: . , ; : ! ? ' " ( ) [ ] { } -
Tokens, layers, heads, weights, tensors, kernels, operators, devices, containers, registries, releases.
Once upon a time there was a tiny model that could not say anything useful, but it loaded and it served,
and the engine answered every request with a stream of tokens. The end. Thanks for reading this text!
Monday Tuesday Wednesday Thursday Friday Saturday Sunday. January February March April May June July.
Red orange yellow green blue indigo violet black white grey. North south east west up down left right.
"""


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise UserError(
            f"making the tiny model needs the Python package {module!r}",
            fix="pip install tokenizers numpy (they are in the project's [test] extras)",
        ) from exc


def _train_tokenizer() -> Any:
    tokenizers = _need("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    # Byte-level: any text encodes (no unknown token), and decoding round-trips exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tok


def _bf16_bits(values: Any) -> Any:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even like torch does."""
    np = _need("numpy")
    bits = values.astype(np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype("<u2")


def _weights() -> dict[str, tuple[list[int], bytes]]:
    """Llama tensor names and shapes as transformers saves them; bf16 little-endian bytes."""
    np = _need("numpy")
    rng = np.random.default_rng(SEED)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB_SIZE, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        }
    shapes["model.norm.weight"] = (HIDDEN,)
    out: dict[str, tuple[list[int], bytes]] = {}
    # Sorted so the random stream, and therefore the bytes, do not depend on dict order.
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            values = np.ones(shape, dtype=np.float32)
        else:
            values = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
        out[name] = (list(shape), _bf16_bits(values).tobytes())
    return out


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], bytes]], dtype: str = "BF16") -> None:
    """The safetensors layout: u64 LE header size, JSON header, then the tensors' bytes back to back.

    Written by hand because safetensors.numpy cannot express bf16 (numpy has no such dtype).
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    # Pad with spaces (allowed by the format) so the data starts 8-byte aligned, as the reference writer does.
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name in sorted(tensors):
            fh.write(tensors[name][1])


def _configs(tok: Any) -> dict[str, dict[str, Any]]:
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(IM_END)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        # tied: the output projection reuses the embedding, which saves a 128 KB tensor
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        # both spellings: older transformers read torch_dtype, newer ones dtype
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": IM_END,
        "pad_token": BOS,
        "unk_token": None,
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                      "rstrip": False, "single_word": False, "special": True}
            for t in SPECIAL_TOKENS
        },
    }
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id}
    special_map = {"bos_token": BOS, "eos_token": IM_END, "pad_token": BOS}
    return {
        "config.json": config,
        "tokenizer_config.json": tokenizer_config,
        "generation_config.json": generation,
        "special_tokens_map.json": special_map,
    }


def _write(directory: Path) -> None:
    tok = _train_tokenizer()
    if tok.get_vocab_size() != VOCAB_SIZE:
        # the config's vocab_size must match what the tokenizer can emit; a short corpus would break it
        raise RuntimeError(f"tokenizer trained to {tok.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    tok.save(str(directory / "tokenizer.json"))
    for name, data in _configs(tok).items():
        (directory / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_safetensors(directory / "model.safetensors", _weights())


def content_hash(directory: Path) -> str:
    """sha256 over each file's name and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def make_tiny_model(dest: Path | None = None) -> Path:
    """Make (or reuse) the tiny model under `dest` (default: <cache>/models); returns its directory.

    The model is always regenerated (well under a second) and hashed: the directory name is the hash
    of what this code writes today, so a change in the recipe or in `tokenizers` gives a new directory
    instead of silently reusing stale files.
    """
    root = Path(dest) if dest is not None else paths.cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-tiny-llama-", dir=root))
    try:
        _write(tmp)
        final = root / f"tiny-llama-{content_hash(tmp)[:16]}"
        if final.is_dir():
            return final
        # mkdtemp makes the directory 0700; the container may read it as another user
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(final)
        except OSError:
            # another process renamed the same content into place first: theirs is identical
            if not final.is_dir():
                raise
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

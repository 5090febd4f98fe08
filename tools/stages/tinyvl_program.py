"""Runs INSIDE an engine image (`python3 tinyvl_program.py OUT`): writes a tiny random Qwen2.5-VL to OUT.

This file is a program, not a module of the host package: the host has neither torch nor transformers,
the cpu image has both. It imports only the standard library and what the image brings (torch,
transformers, tokenizers) and nothing from `tools`. tools/stages/tinyvl.py runs it in a container and
caches the result.

What it writes, and who writes it:
- tokenizer.json: a byte-level BPE with no merges (one token per byte, so any text encodes) plus the
  Qwen2-VL special tokens; built here with `tokenizers`, no training, no corpus.
- tokenizer_config.json, chat_template.jinja (Qwen2-VL's way of placing an image in a turn),
  preprocessor_config.json (Qwen2-VL image processing with a small pixel budget, so an image is at most
  16 tokens): written here as JSON.
- video_preprocessor_config.json + video_processing_tiny_vl.py: a video processor that refuses videos,
  loaded as the model's remote code (see VIDEO_PROCESSOR_CODE for why), so serving needs trust_remote_code
  and limit_mm_per_prompt video 0.
- config.json, generation_config.json, model.safetensors: transformers' Qwen2_5_VLForConditionalGeneration
  built from a small config with a fixed seed, saved in bfloat16.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SEED = 20261123
# head_dim 64 in both towers: the vLLM CPU attention backend accepts 64 (16 fails)
TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 2048}
VISION = {"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 2, "out_hidden_size": 128,
          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
          "fullatt_block_indexes": [1], "in_channels": 3, "tokens_per_second": 2}
# rotary sections (temporal, height, width) of the text model's M-RoPE: they add up to head_dim / 2
MROPE_SECTION = [8, 12, 12]
# pixels per image after resizing: 56x56 .. 112x112, i.e. 4 .. 16 image tokens (28x28 pixels a token)
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
VOCAB_SIZE = 320  # 256 byte tokens + 8 special tokens, padded to a multiple of 64

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The model's own video processor (loaded as remote code, so the recipe sets trust_remote_code): the cpu
# image has no torchvision (PyPI's builds are CUDA builds that break beside the CPU torch), and
# transformers' Qwen2VLVideoProcessor cannot load without it. Qwen2_5_VLProcessor still needs a video
# processor object; this one holds the sizes and refuses to process a video.
VIDEO_MODULE = "video_processing_tiny_vl"
VIDEO_CLASS = "ImagesOnlyVideoProcessor"
VIDEO_PROCESSOR_CODE = '''"""Video processor of a tiny test model serving images only (its image has no torchvision).

Without torchvision, transformers maps Qwen2-VL to no video processor and does not export
VideoProcessorMixin at its top level, where ProcessorMixin looks it up to type-check every processor's
video_processor. This module gives that lookup the real class (transformers.video_processing_utils imports
without torchvision) and a subclass that holds the sizes and refuses videos.
"""

import transformers
from transformers.video_processing_utils import BaseVideoProcessor, VideoProcessorMixin

if not hasattr(transformers, "VideoProcessorMixin"):
    transformers.VideoProcessorMixin = VideoProcessorMixin


class ImagesOnlyVideoProcessor(BaseVideoProcessor):
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __call__(self, *args, **kwargs):
        raise ValueError("this model serves images only: it has no video processor")

    preprocess = __call__
'''

# CLIP's normalisation, as Qwen2-VL uses it
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value, in byte order (what ByteLevel pre-tokenizes to)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _tokenizer(out: Path) -> dict[str, int]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    if sorted(ids.values()) != list(range(256, 256 + len(SPECIAL))):
        raise SystemExit(f"special token ids are not 256..: {ids}")
    return ids


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _processor_files(out: Path, ids: dict[str, int]) -> None:
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": TEXT["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True} for t in SPECIAL},
        "processor_class": "Qwen2_5_VLProcessor",
    })
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    common = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD, "rescale_factor": 1 / 255,
        "patch_size": VISION["patch_size"], "temporal_patch_size": VISION["temporal_patch_size"],
        "merge_size": VISION["spatial_merge_size"],
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "processor_class": "Qwen2_5_VLProcessor",
    }
    _write_json(out / "preprocessor_config.json", {**common, "image_processor_type": "Qwen2VLImageProcessor"})
    # the video side: transformers' Qwen2VLVideoProcessor needs torchvision, which the cpu image lacks
    (out / f"{VIDEO_MODULE}.py").write_text(VIDEO_PROCESSOR_CODE, encoding="utf-8")
    _write_json(out / "video_preprocessor_config.json",
                {**common, "auto_map": {"AutoVideoProcessor": f"{VIDEO_MODULE}.{VIDEO_CLASS}"}})


def _model(out: Path, ids: dict[str, int]) -> None:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {**TEXT, "vocab_size": VOCAB_SIZE, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "rope_scaling": {"type": "mrope", "mrope_section": MROPE_SECTION}, "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "tie_word_embeddings": True}
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=VISION,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, dtype="bfloat16",
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(str(out))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer(out)
    _processor_files(out, ids)
    _model(out, ids)
    import torch
    import transformers

    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                      "files": sorted(p.name for p in out.iterdir())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

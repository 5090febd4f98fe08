"""torch.ops._C as vLLM 0.32.0's cpu build registers it (the schemas the op-test suite calls, as the real
build prints them), torch underneath. Knobs: FAKE_VLLM_BREAK (outputs 5% off, greedy_argmax all zeros),
FAKE_VLLM_MISSING (not registered), FAKE_VLLM_RAISE (the kernel raises), FAKE_VLLM_NO_FP16_MM (oneDNN
refuses a float16 matmul, as on this project's CPUs)."""

import math
import os

import torch
import torch.nn.functional as F


def _knob(name):
    return set(filter(None, os.environ.get(name, "").split(",")))


BREAK, MISSING, RAISE = _knob("FAKE_VLLM_BREAK"), _knob("FAKE_VLLM_MISSING"), _knob("FAKE_VLLM_RAISE")
_lib = torch.library.Library("_C", "DEF")
_handles: dict[int, torch.Tensor] = {}


def _op(schema):
    name = schema.split("(", 1)[0]

    def register(fn):
        if name in MISSING:
            return fn

        def impl(*args):  # torch drops trailing arguments equal to the schema's defaults: fn has them too
            if name in RAISE:
                raise RuntimeError(f"fake vLLM kernel {name} failed")
            return fn(*args)

        _lib.define(schema)
        _lib.impl(name, impl, "CPU")
        return fn

    return register


def _put(dst, value, name):
    dst.copy_(value * 1.05 if name in BREAK else value)


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.float()


@_op("rms_norm(Tensor(a!) out, Tensor input, Tensor? weight, float epsilon) -> ()")
def rms_norm(out, x, w, eps):
    _put(out, _rms(x.float(), w, eps), "rms_norm")


@_op("fused_add_rms_norm(Tensor(a!) input, Tensor(b!) residual, Tensor? weight, float epsilon) -> ()")
def fused_add_rms_norm(x, residual, w, eps):
    r = x.float() + residual.float()
    _put(x, _rms(r, w, eps), "fused_add_rms_norm")
    residual.copy_(r)


@_op("silu_and_mul(Tensor(a!) out, Tensor input) -> ()")
def silu_and_mul(out, x):
    d = x.shape[-1] // 2
    _put(out, F.silu(x[..., :d].float()) * x[..., d:].float(), "silu_and_mul")


@_op("gelu_and_mul(Tensor(a!) out, Tensor input) -> ()")
def gelu_and_mul(out, x):
    d = x.shape[-1] // 2
    _put(out, F.gelu(x[..., :d].float()) * x[..., d:].float(), "gelu_and_mul")


@_op("rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!)? key, int head_size, Tensor cos_sin_cache, "
     "bool is_neox, int rope_dim_offset=0, bool inverse=False) -> ()")
def rotary_embedding(positions, query, key, head_size, cache, is_neox, offset=0, inverse=False):
    assert is_neox and offset == 0 and not inverse
    cs = cache[positions].float()
    half = cs.shape[-1] // 2
    c, s = cs[:, None, :half], cs[:, None, half:]
    for x in (query, key):
        v = x.view(x.shape[0], -1, head_size).float()
        x1, x2 = v[..., :half], v[..., half:]
        _put(x, torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).view(x.shape), "rotary_embedding")


@_op("create_onednn_mm_handler(Tensor b, int primitive_cache_size) -> int")
def create_onednn_mm_handler(b, cache_size):
    if b.dtype == torch.float16 and os.environ.get("FAKE_VLLM_NO_FP16_MM"):  # oneDNN on a CPU without one
        raise RuntimeError("could not create a primitive descriptor for the matmul primitive")
    handle = len(_handles) + 1
    _handles[handle] = b.clone()
    return handle


@_op("onednn_mm(Tensor(a!) c, Tensor a, Tensor? bias, Tensor handler_tensor) -> ()")
def onednn_mm(c, a, bias, handler):
    out = a.float() @ _handles[int(handler.item())].float()
    _put(c, out if bias is None else out + bias.float(), "onednn_mm")


@_op("release_dnnl_matmul_handler(int handler) -> ()")
def release_dnnl_matmul_handler(handle):
    del _handles[handle]


@_op("get_scheduler_metadata(int num_req, int num_heads_q, int num_heads_kv, int head_dim, Tensor seq_lens, "
     "ScalarType dtype, Tensor query_start_loc, bool casual, int window_size, str isa_hint, bool enable_kv_split, "
     'Tensor? dynamic_causal, str kv_cache_dtype="auto") -> Tensor')
def get_scheduler_metadata(num_req, hq, hk, d, seq_lens, dtype, qsl, causal, window, isa, split, dyn,
                           kv_dtype="auto"):
    return torch.zeros(1, dtype=torch.int64)


@_op("cpu_attn_reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
     'Tensor slot_mapping, str isa, float k_scale=1., float v_scale=1., str kv_cache_dtype="auto") -> ()')
def cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa, ks=1.0, vs=1.0, kv_dtype="auto"):
    bs = key_cache.shape[2]
    blk, off = slots // bs, slots % bs
    key_cache[blk, :, off] = key
    value_cache[blk, :, off] = value


@_op("cpu_attention_with_kv_cache(Tensor query, Tensor key_cache, Tensor value_cache, Tensor(a!) output, "
     "Tensor query_start_loc, Tensor seq_lens, float scale, bool causal, Tensor? alibi_slopes, "
     "SymInt sliding_window_size, Tensor block_table, float softcap, Tensor scheduler_metadata, Tensor? s_aux, "
     'Tensor? dynamic_causal, float k_scale=1., float v_scale=1., str kv_cache_dtype="auto") -> ()')
def cpu_attention_with_kv_cache(q, key_cache, value_cache, out, qsl, seq_lens, scale, causal, alibi, window,
                                block_table, softcap, meta, s_aux, dyn, ks=1.0, vs=1.0, kv_dtype="auto"):
    bs, hq, hk = key_cache.shape[2], q.shape[1], key_cache.shape[1]
    for i in range(seq_lens.shape[0]):
        n, q0, q1 = int(seq_lens[i]), int(qsl[i]), int(qsl[i + 1])
        blocks = block_table[i, : math.ceil(n / bs)].long()

        def gather(cache, blocks=blocks, n=n):
            return cache[blocks].permute(0, 2, 1, 3).reshape(-1, hk, cache.shape[-1])[:n].float()

        k = gather(key_cache).transpose(0, 1).repeat_interleave(hq // hk, dim=0)
        v = gather(value_cache).transpose(0, 1).repeat_interleave(hq // hk, dim=0)
        qi = q[q0:q1].float().transpose(0, 1)
        scores = qi @ k.transpose(1, 2) * scale
        qpos = torch.arange(n - (q1 - q0), n)[:, None]
        scores = scores.masked_fill(torch.arange(n)[None, :] > qpos, float("-inf"))
        _put(out[q0:q1], (torch.softmax(scores, dim=-1) @ v).transpose(0, 1), "cpu_attention_with_kv_cache")


@_op("greedy_argmax(Tensor logits) -> Tensor")
def greedy_argmax(logits):
    idx = logits.argmax(dim=-1)
    return torch.zeros_like(idx) if "greedy_argmax" in BREAK else idx

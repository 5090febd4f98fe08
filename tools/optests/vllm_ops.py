"""vLLM's own CPU kernels (torch.ops._C of the installed vLLM build) against float64 references.

Imported only once torch and vLLM import. Each builder calls the kernel with the argument lists vLLM's
layers use (vllm/_custom_ops.py, RotaryEmbedding.forward_cpu, the CPU attention backend, the oneDNN
linear dispatch of model_executor/layers/utils.py); the torch side is vLLM's forward_native math in the
case's dtype, the reference the same math in float64 on the same (rounded) inputs. In-place kernels get
fresh copies for the checked call and reuse buffers for timing.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .cases import CaseSpec
from .ops import Ctx, Out, Prepared, compare
from .runner import Bench, Measurement, Skip

C: Any = None  # torch.ops._C, set by VllmExecutor once vLLM's kernels are loaded


# --- norms: vLLM's ir native rms_norm / fused_add_rms_norm is the torch side ---------------------------------

def _rms_native(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf.to(w.dtype) * w).to(x.dtype)


def _rms64(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rms_norm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x, w, eps = ctx.randn(p["T"], p["H"]), ctx.randn(p["H"], scale=0.1) + 1, 1e-6
    out = torch.empty_like(x)

    def kernel() -> Out:
        C.rms_norm(out, x, w, eps)
        return out

    return Prepared(lambda: _rms_native(x, w, eps), kernel, lambda: _rms64(ctx.f64(x), ctx.f64(w), eps))


def fused_add_rms_norm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x, res, w, eps = ctx.randn(p["T"], p["H"]), ctx.randn(p["T"], p["H"]), ctx.randn(p["H"], scale=0.1) + 1, 1e-6

    def native() -> Out:
        r = x.float() + res.float()
        return _rms_native(r, w, eps).to(x.dtype), r.to(x.dtype)

    def kernel() -> Out:  # in place: x becomes the normed output, res the sum
        xo, ro = x.clone(), res.clone()
        C.fused_add_rms_norm(xo, ro, w, eps)
        return xo, ro

    def reference() -> Out:
        r = ctx.f64(x) + ctx.f64(res)
        return _rms64(r, ctx.f64(w), eps), r

    xb, rb = x.clone(), res.clone()
    return Prepared(native, kernel, reference, kernel_bench=lambda: C.fused_add_rms_norm(xb, rb, w, eps))


# --- gated activations: out[T, I] from x[T, 2I] (gate half, up half) ----------------------------------------

def _gated(ctx: Ctx, p: Mapping[str, int], name: str, act: Callable[[torch.Tensor], torch.Tensor],
           act64: Callable[[torch.Tensor], torch.Tensor]) -> Prepared:
    d = p["I"]
    x = ctx.randn(p["T"], 2 * d)
    out = torch.empty(p["T"], d, dtype=x.dtype, device=x.device)

    def kernel() -> Out:
        getattr(C, name)(out, x)
        return out

    def reference() -> Out:
        x64 = ctx.f64(x)
        return act64(x64[..., :d]) * x64[..., d:]

    return Prepared(lambda: act(x[..., :d]) * x[..., d:], kernel, reference)


def silu_and_mul(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    return _gated(ctx, p, "silu_and_mul", F.silu, lambda z: z / (1 + torch.exp(-z)))


def gelu_and_mul(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    return _gated(ctx, p, "gelu_and_mul", F.gelu, lambda z: 0.5 * z * (1 + torch.erf(z / 2**0.5)))


# --- rotary embedding: RotaryEmbedding.forward_cpu (neox style, cos|sin cache in the query dtype) -----------

def rotary_embedding(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    t, d, max_pos, hq, hk = p["T"], p["D"], p["P"], p["Hq"], p["Hk"]
    q, k = ctx.randn(t, hq * d), ctx.randn(t, hk * d)  # vLLM passes [tokens, heads * head_size]
    pos = ctx.randint(max_pos, t)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(ctx.device, ctx.dtype)  # [P, D]

    def rotate(x: torch.Tensor, heads: int, cs: torch.Tensor) -> torch.Tensor:
        c, s = cs[..., : d // 2].unsqueeze(-2), cs[..., d // 2:].unsqueeze(-2)
        x = x.view(t, heads, d)
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).reshape(t, heads * d)

    def native() -> Out:  # forward_native: in the tensors' dtype
        cs = cache[pos]
        return rotate(q, hq, cs), rotate(k, hk, cs)

    def kernel() -> Out:
        qo, ko = q.clone(), k.clone()
        C.rotary_embedding(pos, qo, ko, d, cache, True)
        return qo, ko

    def reference() -> Out:
        cs = ctx.f64(cache)[pos.to(ctx.ref_device)]
        return rotate(ctx.f64(q), hq, cs), rotate(ctx.f64(k), hk, cs)

    qb, kb = q.clone(), k.clone()
    return Prepared(native, kernel, reference, kernel_bench=lambda: C.rotary_embedding(pos, qb, kb, d, cache, True))


# --- linear layers: dispatch_cpu_unquantized_gemm's oneDNN path ----------------------------------------------

def onednn_mm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    m, n, k = p["M"], p["N"], p["K"]
    x, w = ctx.randn(m, k), ctx.randn(n, k)  # weight stored [N, K] like nn.Linear
    # vllm._custom_ops.create_onednn_mm(weight.t(), 32): the handler keeps a prepacked copy of W^T
    try:
        handle = int(C.create_onednn_mm_handler(w.t(), 32))
    except RuntimeError as exc:  # what dispatch_cpu_unquantized_gemm catches: it then uses F.linear
        text = " ".join(str(exc).split())[:160]
        raise Skip(f"oneDNN builds no {ctx.dtype} matmul on this CPU ({text}): vLLM's linear layers fall back "
                   "to torch.nn.functional.linear here") from exc
    handler = torch.tensor(handle, dtype=torch.int64)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)

    def kernel() -> Out:
        C.onednn_mm(out, x, None, handler)
        return out

    def release() -> None:
        C.release_dnnl_matmul_handler(handle)

    return Prepared(lambda: F.linear(x, w), kernel, lambda: ctx.f64(x) @ ctx.f64(w).t(), cleanup=release)


# --- attention: the CPU backend's KV-cache write and paged attention ----------------------------------------

def attention_isa(dtype: torch.dtype, block_size: int, head_size: int) -> tuple[str, str]:
    """The ISA vLLM's CPU backend picks (its own _get_attn_isa), and where that answer came from."""
    try:
        mod = importlib.import_module("vllm.v1.attention.backends.cpu_attn")
        return str(mod._get_attn_isa(dtype, block_size, head_size, "auto")), "vLLM's _get_attn_isa"
    except Exception as exc:  # noqa: BLE001 - a build without it still has the kernels
        return "vec", f"default (vLLM's _get_attn_isa unavailable: {type(exc).__name__})"


def attention(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    """B requests of S tokens each (the last Q of them are queries; Q == S is a prefill, Q == 1 a decode
    step), GQA with Hq query and Hk key/value heads, paged in blocks of BS tokens through a shuffled
    block table. The kernel writes every token's K/V into the cache, then attends causally."""
    b, q_len, s, hq, hk, d, bs = p["B"], p["Q"], p["S"], p["Hq"], p["Hk"], p["D"], p["BS"]
    scale = d ** -0.5
    q = ctx.randn(b * q_len, hq, d)
    k, v = ctx.randn(b * s, hk, d), ctx.randn(b * s, hk, d)
    per_req = -(-s // bs)
    num_blocks = b * per_req + 2
    perm = torch.randperm(num_blocks, generator=ctx.gen, device=ctx.gen.device)[: b * per_req]
    block_table = perm.view(b, per_req).to(torch.int32)
    token = torch.arange(s)
    slots = torch.cat([block_table[i].long()[token // bs] * bs + token % bs for i in range(b)])
    seq_lens = torch.full((b,), s, dtype=torch.int32)
    query_start_loc = torch.arange(0, (b + 1) * q_len, q_len, dtype=torch.int32)
    isa, isa_from = attention_isa(ctx.dtype, bs, d)
    kv_cache = torch.zeros(num_blocks, hk, bs, 2 * d, dtype=ctx.dtype)
    # as CPUAttentionBackendImpl.forward: view [blocks, Hk, 2 * BS, D], K and V halves along dim 2
    key_cache, value_cache = kv_cache.view(num_blocks, hk, bs * 2, d).chunk(2, dim=2)
    out = torch.empty_like(q)
    meta = C.get_scheduler_metadata(b, hq, hk, d, seq_lens, ctx.dtype, query_start_loc, True, -1, isa, False,
                                    None, "auto")

    def attend() -> Out:
        C.cpu_attention_with_kv_cache(q, key_cache, value_cache, out, query_start_loc, seq_lens, scale, True,
                                      None, -1, block_table, 0.0, meta, None, None, 1.0, 1.0, "auto")
        return out

    def kernel() -> Out:
        kv_cache.zero_()
        C.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa, 1.0, 1.0, "auto")
        return attend()

    def mask(device: torch.device) -> torch.Tensor:
        qpos = torch.arange(s - q_len, s, device=device)
        return torch.arange(s, device=device)[None, :] <= qpos[:, None]  # [Q, S]

    def native() -> Out:  # torch SDPA per request on unpaged K/V
        outs = []
        m = mask(q.device)
        for i in range(b):
            qi = q[i * q_len:(i + 1) * q_len].transpose(0, 1)
            ki = k[i * s:(i + 1) * s].transpose(0, 1).repeat_interleave(hq // hk, dim=0)
            vi = v[i * s:(i + 1) * s].transpose(0, 1).repeat_interleave(hq // hk, dim=0)
            outs.append(F.scaled_dot_product_attention(qi, ki, vi, attn_mask=m, scale=scale).transpose(0, 1))
        return torch.cat(outs)

    def reference() -> Out:
        q64, k64, v64 = ctx.f64(q), ctx.f64(k), ctx.f64(v)
        m = mask(q64.device)
        outs = []
        for i in range(b):
            qi = q64[i * q_len:(i + 1) * q_len].transpose(0, 1)  # [Hq, Q, D]
            ki = k64[i * s:(i + 1) * s].transpose(0, 1).repeat_interleave(hq // hk, dim=0)
            vi = v64[i * s:(i + 1) * s].transpose(0, 1).repeat_interleave(hq // hk, dim=0)
            scores = (qi @ ki.transpose(1, 2)) * scale
            probs = torch.softmax(scores.masked_fill(~m, float("-inf")), dim=-1)
            outs.append((probs @ vi).transpose(0, 1))
        return torch.cat(outs)

    return Prepared(native, kernel, reference, kernel_bench=attend,
                    extra={"note": f"isa {isa} ({isa_from}), block size {bs}"})


# --- sampling -------------------------------------------------------------------------------------------

def greedy_argmax(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x = ctx.randn(p["B"], p["V"], scale=3.0)
    return Prepared(lambda: torch.argmax(x, dim=-1), lambda: C.greedy_argmax(x), lambda: ctx.f64(x), check="argmax")


BUILDERS: dict[str, Callable[[Ctx, Mapping[str, int]], Prepared]] = {
    "vllm_rms_norm": rms_norm, "vllm_fused_add_rms_norm": fused_add_rms_norm,
    "vllm_silu_and_mul": silu_and_mul, "vllm_gelu_and_mul": gelu_and_mul,
    "vllm_rotary_embedding": rotary_embedding, "vllm_onednn_mm": onednn_mm, "vllm_attention": attention,
    "vllm_greedy_argmax": greedy_argmax,
}


class VllmExecutor(Bench):
    """Runs one vLLM kernel case on the CPU: reference, vLLM's native torch path, the _C kernel, timings."""

    def __init__(self, torch_mod: Any, vllm: Any, *, reps: int = 30, warmup: int = 5, seed: int = 0) -> None:
        global C
        super().__init__(torch_mod, torch.device("cpu"), reps=reps, warmup=warmup, seed=seed)
        C = torch.ops._C
        self.version = getattr(vllm, "__version__", "?")

    def __call__(self, spec: CaseSpec) -> Measurement:
        op = spec.opdef
        missing = [name for name in op.vllm if not hasattr(C, name)]
        if missing:
            raise Skip(f"vLLM {self.version} has no torch.ops._C.{', torch.ops._C.'.join(missing)}")
        tol = spec.tolerance
        ctx = Ctx(self.device, self.device, getattr(torch, spec.dtype), self._gen(spec))
        prepared = BUILDERS[spec.op](ctx, spec.params)
        try:
            with torch.no_grad():
                ref = prepared.reference()
                torch_out = prepared.torch_call()
                torch_err, torch_score = compare(prepared, torch_out, ref, tol.rtol, tol.atol)
                kernel_out = prepared.kernel_call()
                kernel_err, kernel_score = compare(prepared, kernel_out, ref, tol.rtol, tol.atol)
                kernel_ms, kernel_stream_ms = self.bench(prepared.kernel_bench or prepared.kernel_call)
                torch_ms, torch_stream_ms = self.bench(prepared.torch_call)
        finally:
            if prepared.cleanup is not None:
                with contextlib.suppress(Exception):
                    prepared.cleanup()
        notes = [f"torch.ops._C.{', torch.ops._C.'.join(op.vllm)} of vLLM {self.version}"]
        if not op.engine:
            notes.append("vLLM's cpu engine takes the torch-native path for this op on x86 (kernel exposed only)")
        if prepared.extra and "note" in prepared.extra:
            notes.append(str(prepared.extra["note"]))
        return Measurement(kernel_err=kernel_err, kernel_score=kernel_score, torch_err=torch_err,
                           torch_score=torch_score, torch_ms=round(torch_ms, 5), kernel_ms=round(kernel_ms, 5),
                           torch_stream_ms=round(torch_stream_ms, 5), kernel_stream_ms=round(kernel_stream_ms, 5),
                           notes=notes)

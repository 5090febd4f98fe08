"""Inputs, torch calls, FlagGems calls and float64 references for each op of the catalog.

Imported only once torch imports. Every builder gets fresh random inputs in the case's dtype and returns
a Prepared: the float64 reference is computed from those same (rounded) inputs, so it is exact and the
only error measured is the kernel's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Out = Any  # a tensor or a tuple of tensors


class Mismatch(Exception):
    """An output that cannot be compared at all (wrong shape or dtype, wrong indices)."""


@dataclass
class Ctx:
    device: torch.device
    ref_device: torch.device
    dtype: torch.dtype
    gen: torch.Generator
    gems_fn: Callable[..., Any] | None = None  # the FlagGems function, for fused ops
    gems: Any = None  # the flag_gems module

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        t = torch.randn(shape, generator=self.gen, device=self.gen.device, dtype=torch.float32)
        return (t * scale).to(self.device, self.dtype)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self.gen, device=self.gen.device).to(self.device)

    def f64(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.ref_device, torch.float64)


@dataclass
class Prepared:
    torch_call: Callable[[], Out]
    kernel_call: Callable[[], Out]  # the kernel under test: FlagGems' or vLLM's
    reference: Callable[[], Out]
    # "close": elementwise against the reference; otherwise a semantic check returning (err, score)
    check: str = "close"
    kernel_bench: Callable[[], Out] | None = None  # repeatable form for timing (in-place ops)
    # FlagGems' own function, called when use_gems() did not route the aten op to it (noted in the result)
    gems_direct: Callable[[], Out] | None = None
    extra: Mapping[str, Any] | None = None
    cleanup: Callable[[], None] | None = None  # frees what the case allocated outside torch (oneDNN handles)


def _need_gems(ctx: Ctx) -> Callable[..., Any]:
    assert ctx.gems_fn is not None, "fused op without a FlagGems function"
    return ctx.gems_fn


# --- norms -----------------------------------------------------------------------------------------------

def _rms_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rms_torch(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    xf = x.float()  # vLLM's RMSNorm.forward_native
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rms_norm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x, w, eps = ctx.randn(p["T"], p["H"]), ctx.randn(p["H"], scale=0.1) + 1, 1e-6

    def call() -> Out:
        return _rms_torch(x, w, eps)

    direct = getattr(ctx.gems, "rms_norm", None)
    return Prepared(call, call, lambda: _rms_ref(ctx.f64(x), ctx.f64(w), eps),
                    gems_direct=(lambda: direct(x, (p["H"],), w, eps)) if direct else None)


def fused_add_rms_norm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    fn = _need_gems(ctx)
    x, res, w, eps = ctx.randn(p["T"], p["H"]), ctx.randn(p["T"], p["H"]), ctx.randn(p["H"], scale=0.1) + 1, 1e-6
    shape = (p["H"],)

    def torch_call() -> Out:
        r = x + res
        return _rms_torch(r, w, eps), r

    def reference() -> Out:
        r = ctx.f64(x) + ctx.f64(res)
        return _rms_ref(r, ctx.f64(w), eps), r

    xb, rb = x.clone(), res.clone()  # in place, as vLLM calls it: timing reuses these buffers
    return Prepared(torch_call, lambda: fn(x.clone(), res.clone(), shape, w, eps), reference,
                    kernel_bench=lambda: fn(xb, rb, shape, w, eps))


def layer_norm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x, w, b, eps = ctx.randn(p["T"], p["H"]), ctx.randn(p["H"], scale=0.1) + 1, ctx.randn(p["H"], scale=0.1), 1e-5

    def call() -> Out:
        return F.layer_norm(x, (p["H"],), w, b, eps)

    def reference() -> Out:
        x64 = ctx.f64(x)
        mean = x64.mean(-1, keepdim=True)
        var = (x64 - mean).pow(2).mean(-1, keepdim=True)
        return (x64 - mean) * torch.rsqrt(var + eps) * ctx.f64(w) + ctx.f64(b)

    return Prepared(call, call, reference)


# --- activations -----------------------------------------------------------------------------------------

def _silu64(z: torch.Tensor) -> torch.Tensor:
    return z / (1 + torch.exp(-z))


def _gelu64(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z * (1 + torch.erf(z / 2**0.5))


def silu_and_mul(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    fn, d = _need_gems(ctx), p["I"]
    x = ctx.randn(p["T"], 2 * d)
    a, b = x[..., :d], x[..., d:]  # vLLM passes one [T, 2d] tensor: gate and up halves

    def reference() -> Out:
        x64 = ctx.f64(x)
        return _silu64(x64[..., :d]) * x64[..., d:]

    return Prepared(lambda: F.silu(a) * b, lambda: fn(a, b), reference)


def gelu_and_mul(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    fn, d = _need_gems(ctx), p["I"]
    x = ctx.randn(p["T"], 2 * d)
    a, b = x[..., :d], x[..., d:]

    def reference() -> Out:
        x64 = ctx.f64(x)
        return _gelu64(x64[..., :d]) * x64[..., d:]

    return Prepared(lambda: F.gelu(a) * b, lambda: fn(a, b, approximate="none"), reference)


def silu(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x = ctx.randn(p["T"], p["I"])
    return Prepared(lambda: F.silu(x), lambda: F.silu(x), lambda: _silu64(ctx.f64(x)))


def gelu(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x = ctx.randn(p["T"], p["I"])
    return Prepared(lambda: F.gelu(x), lambda: F.gelu(x), lambda: _gelu64(ctx.f64(x)))


# --- rotary embedding ------------------------------------------------------------------------------------

def rotary_embedding(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    """Neox style (rotate halves), cos/sin cache in the model dtype, positions per token: vLLM's layout."""
    fn = _need_gems(ctx)
    t, d, max_pos = p["T"], p["D"], p["P"]
    q, k = ctx.randn(t, p["Hq"], d), ctx.randn(t, p["Hk"], d)
    pos = ctx.randint(max_pos, t)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos().to(ctx.device, ctx.dtype), freqs.sin().to(ctx.device, ctx.dtype)

    def rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    def torch_call() -> Out:  # vLLM's RotaryEmbedding.forward_native, in the tensors' dtype
        c, s = cos[pos].unsqueeze(-2), sin[pos].unsqueeze(-2)
        return rotate(q, c, s), rotate(k, c, s)

    def reference() -> Out:
        pos_r = pos.to(ctx.ref_device)
        c, s = ctx.f64(cos)[pos_r].unsqueeze(-2), ctx.f64(sin)[pos_r].unsqueeze(-2)
        return rotate(ctx.f64(q), c, s), rotate(ctx.f64(k), c, s)

    return Prepared(torch_call, lambda: fn(q, k, cos, sin, position_ids=pos, rotary_interleaved=False),
                    reference)


# --- softmax family --------------------------------------------------------------------------------------

def softmax(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x = ctx.randn(p["B"], p["V"], scale=2.0)
    return Prepared(lambda: torch.softmax(x, dim=-1), lambda: torch.softmax(x, dim=-1),
                    lambda: torch.softmax(ctx.f64(x), dim=-1))


def log_softmax(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x = ctx.randn(p["B"], p["V"], scale=2.0)
    return Prepared(lambda: torch.log_softmax(x, dim=-1), lambda: torch.log_softmax(x, dim=-1),
                    lambda: torch.log_softmax(ctx.f64(x), dim=-1))


# --- matrix products -------------------------------------------------------------------------------------

def mm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    a, w = ctx.randn(p["M"], p["K"]), ctx.randn(p["N"], p["K"])  # weight stored [N, K] like nn.Linear

    def call() -> Out:
        return torch.mm(a, w.t())

    return Prepared(call, call, lambda: ctx.f64(a) @ ctx.f64(w).t())


def addmm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    a, w, bias = ctx.randn(p["M"], p["K"]), ctx.randn(p["N"], p["K"]), ctx.randn(p["N"])

    def call() -> Out:
        return torch.addmm(bias, a, w.t())

    return Prepared(call, call, lambda: ctx.f64(bias) + ctx.f64(a) @ ctx.f64(w).t())


def bmm(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    q, k = ctx.randn(p["B"], p["M"], p["K"]), ctx.randn(p["B"], p["N"], p["K"])

    def call() -> Out:
        return torch.bmm(q, k.transpose(1, 2))

    return Prepared(call, call, lambda: torch.bmm(ctx.f64(q), ctx.f64(k).transpose(1, 2)))


# --- lookups, elementwise ----------------------------------------------------------------------------------

def embedding(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    ids, weight = ctx.randint(p["V"], p["T"]), ctx.randn(p["V"], p["H"])

    def call() -> Out:
        return F.embedding(ids, weight)

    return Prepared(call, call, lambda: ctx.f64(weight)[ids.to(ctx.ref_device)])


def add(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    a, b = ctx.randn(p["T"], p["H"]), ctx.randn(p["T"], p["H"])
    return Prepared(lambda: torch.add(a, b), lambda: torch.add(a, b), lambda: ctx.f64(a) + ctx.f64(b))


def mul(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    a, b = ctx.randn(p["T"], p["H"]), ctx.randn(p["T"], p["H"])
    return Prepared(lambda: torch.mul(a, b), lambda: torch.mul(a, b), lambda: ctx.f64(a) * ctx.f64(b))


# --- sampling: index-valued results are checked by what they select ---------------------------------------

def argmax(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x = ctx.randn(p["B"], p["V"], scale=3.0)
    return Prepared(lambda: torch.argmax(x, dim=-1), lambda: torch.argmax(x, dim=-1),
                    lambda: ctx.f64(x), check="argmax")


def topk(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x, k = ctx.randn(p["B"], p["V"], scale=3.0), min(50, p["V"])
    return Prepared(lambda: torch.topk(x, k, dim=-1), lambda: torch.topk(x, k, dim=-1),
                    lambda: ctx.f64(x), check="topk", extra={"k": k})


def sort(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    x = ctx.randn(p["B"], p["V"], scale=3.0)
    return Prepared(lambda: torch.sort(x, dim=-1), lambda: torch.sort(x, dim=-1),
                    lambda: ctx.f64(x), check="sort")


def cumsum(ctx: Ctx, p: Mapping[str, int]) -> Prepared:
    probs = torch.softmax(ctx.randn(p["B"], p["V"], scale=2.0).float(), dim=-1).to(ctx.dtype)
    return Prepared(lambda: torch.cumsum(probs, dim=-1), lambda: torch.cumsum(probs, dim=-1),
                    lambda: torch.cumsum(ctx.f64(probs), dim=-1))


BUILDERS: dict[str, Callable[[Ctx, Mapping[str, int]], Prepared]] = {
    "rms_norm": rms_norm, "fused_add_rms_norm": fused_add_rms_norm, "layer_norm": layer_norm,
    "silu_and_mul": silu_and_mul, "gelu_and_mul": gelu_and_mul, "silu": silu, "gelu": gelu,
    "rotary_embedding": rotary_embedding, "softmax": softmax, "log_softmax": log_softmax,
    "mm": mm, "addmm": addmm, "bmm": bmm, "embedding": embedding, "add": add, "mul": mul,
    "argmax": argmax, "topk": topk, "sort": sort, "cumsum": cumsum,
}


# --- comparison ------------------------------------------------------------------------------------------

def _tensors(out: Out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out]


def _close(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> tuple[float, float]:
    if tuple(out.shape) != tuple(ref.shape):
        raise Mismatch(f"shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    o = out.to(ref.device, torch.float64)
    diff = (o - ref).abs()
    diff = torch.where(torch.isfinite(ref) & ~torch.isfinite(o), torch.full_like(diff, float("inf")), diff)
    diff = torch.nan_to_num(diff, nan=float("inf"))
    bound = atol + rtol * ref.abs()
    if atol == 0.0 and rtol == 0.0:
        score = 0.0 if bool((diff == 0).all()) else float("inf")
    else:
        score = float((diff / bound).max())
    return float(diff.max()) if diff.numel() else 0.0, score


def _exact(err: float) -> tuple[float, float]:
    return err, 0.0 if err == 0.0 else float("inf")


def compare(prepared: Prepared, out: Out, ref: Out, rtol: float, atol: float) -> tuple[float, float]:
    """(max abs error, score) of one output against the reference; score <= 1 passes."""
    if prepared.check == "close":
        outs, refs = _tensors(out), _tensors(ref)
        if len(outs) != len(refs):
            raise Mismatch(f"{len(outs)} outputs, expected {len(refs)}")
        pairs = [_close(o, r, rtol, atol) for o, r in zip(outs, refs, strict=True)]
        return max(e for e, _ in pairs), max(s for _, s in pairs)
    x64: torch.Tensor = ref
    if prepared.check == "argmax":
        idx = _tensors(out)[0].to(x64.device)
        if tuple(idx.shape) != tuple(x64.shape[:-1]) or idx.dtype != torch.int64:
            raise Mismatch(f"argmax gave {idx.dtype} {tuple(idx.shape)}, expected int64 {tuple(x64.shape[:-1])}")
        if bool(((idx < 0) | (idx >= x64.shape[-1])).any()):
            raise Mismatch("argmax index out of range")
        picked = x64.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        return _exact(float((x64.max(dim=-1).values - picked).abs().max()))
    values, idx = _tensors(out)
    if prepared.check == "topk":
        want = x64.topk((prepared.extra or {})["k"], dim=-1).values
    else:
        want = x64.sort(dim=-1).values
    if tuple(values.shape) != tuple(want.shape) or tuple(idx.shape) != tuple(want.shape):
        raise Mismatch(f"values {tuple(values.shape)} / indices {tuple(idx.shape)}, expected {tuple(want.shape)}")
    idx = idx.to(x64.device).long()
    if bool(((idx < 0) | (idx >= x64.shape[-1])).any()):
        raise Mismatch("index out of range")
    v64 = values.to(x64.device, torch.float64)
    # the values must be the exact order statistics, and the indices must point at them (ties: any of them)
    err = max(float((v64 - want).abs().max()), float((x64.gather(-1, idx) - v64).abs().max()))
    return _exact(err)

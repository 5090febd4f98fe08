"""The operator catalog: which ops, shapes and dtypes make up the suite (stdlib only, no torch).

Each op is one that vLLM's models run on the hot path. `aten` ops are called through torch while
`flag_gems.use_gems(include=...)` swaps in FlagGems' kernel; `fused` ops are vLLM custom kernels with
no torch equivalent, called as FlagGems' own function and compared with the same math in torch
primitives. Shapes are moderate (a Llama-7B/8B-sized layer, a 32k vocabulary) so the whole suite,
Triton JIT included, runs in a few minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .tolerances import DTYPES, Tolerance, tolerance_for

Shape = tuple[tuple[str, int], ...]


def shape(**dims: int) -> Shape:
    return tuple(dims.items())


@dataclass(frozen=True)
class OpDef:
    name: str
    summary: str
    shapes: tuple[Shape, ...]
    small: tuple[Shape, ...]
    aten: tuple[str, ...] = ()  # aten overloads FlagGems registers (dispatched through use_gems)
    fused: str | None = None  # flag_gems attribute called directly
    reduce: str | None = None  # dim a matrix product sums over (atol scales with it), if any
    exact: bool = False

    def __post_init__(self) -> None:
        if bool(self.aten) == bool(self.fused):
            raise ValueError(f"op {self.name}: exactly one of aten / fused")


_NORM = (shape(T=1024, H=4096),)
_NORM_S = (shape(T=8, H=64),)
_ACT = (shape(T=1024, I=14336),)
_ACT_S = (shape(T=8, I=96),)
_VOCAB = (shape(B=256, V=32000),)
_VOCAB_S = (shape(B=4, V=300),)

CATALOG: dict[str, OpDef] = {op.name: op for op in (
    OpDef("rms_norm", "RMSNorm of every decoder layer", _NORM, _NORM_S, aten=("rms_norm",)),
    OpDef("fused_add_rms_norm", "vLLM fused residual add + RMSNorm (in place)", _NORM, _NORM_S,
          fused="fused_add_rms_norm"),
    OpDef("layer_norm", "LayerNorm (vision towers, GPT-style models)", _NORM, _NORM_S,
          aten=("native_layer_norm",)),
    OpDef("silu_and_mul", "vLLM SiluAndMul (SwiGLU MLP)", _ACT, _ACT_S, fused="silu_and_mul"),
    OpDef("gelu_and_mul", "vLLM GeluAndMul (GeGLU MLP)", _ACT, _ACT_S, fused="gelu_and_mul"),
    OpDef("silu", "SiLU activation", _ACT, _ACT_S, aten=("silu",)),
    OpDef("gelu", "GELU activation (erf)", _ACT, _ACT_S, aten=("gelu",)),
    OpDef("rotary_embedding", "neox-style rotary embedding of q and k at token positions",
          (shape(T=1024, Hq=32, Hk=8, D=128, P=4096),), (shape(T=8, Hq=4, Hk=2, D=32, P=64),),
          fused="apply_rotary_pos_emb"),
    OpDef("softmax", "softmax over the vocabulary (sampling)", _VOCAB, _VOCAB_S, aten=("_softmax",)),
    OpDef("log_softmax", "log-softmax over the vocabulary (logprobs)", _VOCAB, _VOCAB_S,
          aten=("_log_softmax",)),
    OpDef("mm", "linear layer x @ W^T: prefill and decode batch",
          (shape(M=1024, N=4096, K=4096), shape(M=16, N=4096, K=4096)), (shape(M=8, N=48, K=64),),
          aten=("mm",), reduce="K"),
    OpDef("addmm", "linear layer with bias", (shape(M=1024, N=4096, K=4096),), (shape(M=8, N=48, K=64),),
          aten=("addmm",), reduce="K"),
    OpDef("bmm", "batched q @ k^T (attention scores)", (shape(B=32, M=512, N=512, K=128),),
          (shape(B=2, M=8, N=8, K=32),), aten=("bmm",), reduce="K"),
    OpDef("embedding", "token embedding lookup", (shape(T=1024, V=32000, H=4096),),
          (shape(T=8, V=300, H=64),), aten=("embedding",), exact=True),
    OpDef("add", "residual add", _NORM, _NORM_S, aten=("add.Tensor",)),
    OpDef("mul", "elementwise product", _NORM, _NORM_S, aten=("mul.Tensor",)),
    OpDef("argmax", "greedy sampling over the vocabulary", _VOCAB, _VOCAB_S, aten=("argmax",), exact=True),
    OpDef("topk", "top-k (k=50) sampling over the vocabulary", _VOCAB, _VOCAB_S, aten=("topk",), exact=True),
    OpDef("sort", "sort of logits (top-p sampling)", _VOCAB, _VOCAB_S, aten=("sort",), exact=True),
    OpDef("cumsum", "cumulative sum of probabilities (top-p sampling)", _VOCAB, _VOCAB_S, aten=("cumsum",)),
)}


@dataclass(frozen=True)
class CaseSpec:
    op: str
    dtype: str
    dims: Shape
    params: Mapping[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(self.dims))

    @property
    def shape(self) -> str:
        return " ".join(f"{k}{v}" for k, v in self.dims)

    @property
    def case_id(self) -> str:
        return f"{self.op}[{self.dtype},{self.shape}]"

    @property
    def opdef(self) -> OpDef:
        return CATALOG[self.op]

    @property
    def tolerance(self) -> Tolerance:
        op = self.opdef
        reduce_dim = self.params[op.reduce] if op.reduce else 1
        return tolerance_for(self.dtype, reduce_dim=reduce_dim, exact=op.exact)


class UnknownName(ValueError):
    pass


def _check(names: Iterable[str], known: Iterable[str], what: str) -> list[str]:
    names, known = list(names), list(known)
    bad = [n for n in names if n not in known]
    if bad:
        raise UnknownName(f"unknown {what} {', '.join(bad)}; known: {', '.join(known)}")
    return names


def select(ops: Iterable[str] = (), dtypes: Iterable[str] = (), *, small: bool = False) -> list[CaseSpec]:
    """Every case of the chosen ops (all when empty) x dtypes (all when empty), in catalog order."""
    op_names = _check(ops, CATALOG, "op") or list(CATALOG)
    dtype_names = _check(dtypes, DTYPES, "dtype") or list(DTYPES)
    specs: list[CaseSpec] = []
    for name in CATALOG:
        if name not in op_names:
            continue
        op = CATALOG[name]
        for dims in op.small if small else op.shapes:
            specs += [CaseSpec(name, dtype, dims) for dtype in DTYPES if dtype in dtype_names]
    return specs

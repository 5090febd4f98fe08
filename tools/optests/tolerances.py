"""Per-dtype tolerances against a float64 reference (stdlib only).

An element passes when |out - ref| <= atol + rtol * |ref|, where `ref` is the exact float64 result of the
same (already rounded) inputs. Why these numbers:

- rtol is about two units of roundoff of the output dtype, because a kernel that computes in float32 and
  rounds once is off by at most half an ulp, and one that rounds an intermediate (silu then mul, say) by
  about one ulp: float16 has 11 significant bits (u = 4.9e-4 -> 1e-3), bfloat16 8 bits (u = 3.9e-3;
  1.6e-2 is the value torch.testing and FlagGems' own tests use). float32 gets 1e-4 instead of its 1.2e-7
  roundoff: Triton kernels reduce in another order than cuBLAS/ATen and use approximate exp/rsqrt, and the
  check must tell a wrong kernel from a reordered one, not judge bit-exactness.
- atol only matters where the result cancels to near zero (layer-norm centring, rotary's q*cos - q'*sin,
  a residual add): there the error is set by the magnitude of the inputs (O(1) here) times the precision
  the kernel computes in, float32 for FlagGems' half-precision kernels. So atol is small and roughly the
  smallest normal-ish value worth distinguishing in the dtype.
- Matrix products sum K terms of unit size in a float32 accumulator (for every input dtype). A running
  float32 sum's rounding errors grow with the partial sums, about eps * K in all, and two correct GEMMs
  that accumulate in another order differ by that much (on an H100, cuBLAS' own float32 mm at K=4096
  was 5e-4 off a float64 result where the product cancels to near zero). So atol is scaled linearly by
  K there, as FlagGems' own tests do (they use atol 1e-4 * K for every dtype; ours is 1e-6 * K for float32).
  A GEMM that rounds float32 inputs to TF32 (10 bits) would still fail: its error, about 2^-11 * sqrt(K)
  per element, is several times this bound.
  cumsum is not scaled: its terms are probabilities that sum to at most 1.
- Attention (vLLM's CPU kernel) is scaled by the head size D, the length of its q @ k^T sums, as the
  bmm case (attention scores) is by K: an error in a score moves the output by that much times |v|.
  Its second product, softmax weights times V, is not scaled: the weights sum to 1, as in cumsum.
- Index-valued or gathered results (embedding, argmax, topk, sort) are exact: 0 / 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    @property
    def exact(self) -> bool:
        return self.rtol == 0.0 and self.atol == 0.0

    def scaled(self, reduce_dim: int) -> Tolerance:
        """atol grows linearly with the length of a float32-accumulated sum of unit-size terms."""
        return Tolerance(self.rtol, self.atol * max(1, reduce_dim))

    def bound(self, ref_abs: float) -> float:
        return self.atol + self.rtol * ref_abs


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(rtol=1e-4, atol=1e-6),
    "float16": Tolerance(rtol=1e-3, atol=1e-5),
    "bfloat16": Tolerance(rtol=1.6e-2, atol=1e-4),
}
EXACT = Tolerance(0.0, 0.0)
DTYPES: tuple[str, ...] = tuple(TOLERANCES)


def tolerance_for(dtype: str, *, reduce_dim: int = 1, exact: bool = False) -> Tolerance:
    if exact:
        return EXACT
    try:
        base = TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {', '.join(TOLERANCES)}") from None
    return base.scaled(reduce_dim)


def score(abs_err: float, ref_abs: float, tol: Tolerance) -> float:
    """How much of the allowed error one element uses: <= 1 passes. NaN where a number was due is inf."""
    if math.isnan(abs_err):
        return math.inf
    bound = tol.bound(ref_abs)
    if bound == 0.0:
        return 0.0 if abs_err == 0.0 else math.inf
    return abs_err / bound


def within(abs_err: float, ref_abs: float, tol: Tolerance) -> bool:
    return score(abs_err, ref_abs, tol) <= 1.0

"""Stand-ins for the op-test suite's optional imports, and a runner for the suite as a module.

- a flag_gems that fails to import the way the real one does on a CPU-only machine;
- a fake flag_gems: its entry points, torch underneath, env knobs FAKE_BREAK/SILENT/MISSING/RAISE;
- a fake vLLM (tests/fakes/vllm): the torch.ops._C schemas of vLLM 0.32.0's cpu build that the suite
  calls, registered with torch.library, torch underneath; env knobs FAKE_VLLM_BREAK/MISSING/RAISE and
  FAKE_VLLM_PLATFORM (its platform's device_type, default cpu).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tools import PROJECT_ROOT

NO_DEVICE = "No device were detected on your machine !"
FAKE_VLLM = Path(__file__).resolve().parent / "fakes"  # holds the package `vllm`


FAKE_GEMS = '''
"""A stand-in for flag_gems on the CPU: its entry points, torch underneath, env knobs to break ops."""
import logging
import os

import torch
import torch.nn.functional as F

__version__ = "0.0.0+fake"
device = "cpu"
vendor_name = "fake"
_log = logging.getLogger("flag_gems.ops.fake")

# like FlagGems' arch ops (runtime/backend/_nvidia/hopper imported as top-level 'hopper'): mul logs outside
# the flag_gems logger tree
import importlib
import sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_arch"))
_arch_log = logging.getLogger(importlib.import_module("fakearch").__name__ + ".ops.mul")
sys.path.pop(0)


def _knob(name):
    return set(filter(None, os.environ.get(name, "").split(",")))


BREAK, SILENT, MISSING, RAISE = (_knob(k) for k in ("FAKE_BREAK", "FAKE_SILENT", "FAKE_MISSING", "FAKE_RAISE"))
TARGETS = {"rms_norm": (F, "rms_norm", "rms_norm"), "layer_norm": (F, "layer_norm", "native_layer_norm"),
           "silu": (F, "silu", "silu"), "gelu": (F, "gelu", "gelu"), "softmax": (torch, "softmax", "_softmax"),
           "log_softmax": (torch, "log_softmax", "_log_softmax"), "mm": (torch, "mm", "mm"),
           "addmm": (torch, "addmm", "addmm"), "bmm": (torch, "bmm", "bmm"),
           "embedding": (F, "embedding", "embedding"), "add": (torch, "add", "add.Tensor"),
           "mul": (torch, "mul", "mul.Tensor"), "argmax": (torch, "argmax", "argmax"),
           "topk": (torch, "topk", "topk"), "sort": (torch, "sort", "sort"), "cumsum": (torch, "cumsum", "cumsum")}


def _named(name):
    def fn(*args, **kwargs):
        raise AssertionError("registry entry, not called")
    fn.__name__ = name
    return fn


_FULL_CONFIG = tuple((aten, _named(n)) for n, (_, _, aten) in TARGETS.items() if n not in MISSING)


def _out(name, out):
    if name in RAISE:
        raise RuntimeError(f"fake kernel {name} failed")
    if name not in BREAK:
        return out
    if isinstance(out, tuple):
        return tuple(_out(name, o) for o in out)
    return out * 1.05 if out.is_floating_point() else torch.zeros_like(out)


def _wrap(name, orig):
    def fn(*args, **kwargs):
        if name not in SILENT:
            (_arch_log if name == "mul" else _log).debug("GEMS %s", name.upper())
        return _out(name, orig(*args, **kwargs))
    return fn


class use_gems:
    def __init__(self, exclude=None, include=None):
        self.include = list(include or TARGETS)

    def __enter__(self):
        self.saved = [(TARGETS[n][0], TARGETS[n][1]) for n in self.include]
        self.saved = [(mod, attr, getattr(mod, attr)) for mod, attr in self.saved]
        for name, (mod, attr, orig) in zip(self.include, self.saved):
            setattr(mod, attr, _wrap(name, orig))

    def __exit__(self, *exc):
        for mod, attr, orig in reversed(self.saved):
            setattr(mod, attr, orig)


def _fused(name, fn):
    def wrapper(*args, **kwargs):
        _log.debug("GEMS %s", name.upper())
        return _out(name, fn(*args, **kwargs))
    wrapper.__name__ = name
    return wrapper


def rms_norm(x, normalized_shape, weight, eps=1e-5):  # flag_gems.rms_norm, called without dispatch
    _log.debug("GEMS RMS_NORM")
    return (F.rms_norm(x.float(), normalized_shape, weight.float(), eps)).to(x.dtype)


def _silu_and_mul(a, b):
    return (F.silu(a.float()) * b.float()).to(a.dtype)


def _gelu_and_mul(a, b, approximate="none"):
    return (F.gelu(a.float(), approximate=approximate) * b.float()).to(a.dtype)


def _fused_add_rms_norm(x, residual, normalized_shape, weight, eps=1e-5):
    r = x.float() + residual.float()
    y = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    x.copy_(y)
    residual.copy_(r)
    return x, residual


def _apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, rotary_interleaved=False, inplace=False):
    c, s = cos[position_ids].float().unsqueeze(-2), sin[position_ids].float().unsqueeze(-2)
    def rot(x):
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
    return rot(q), rot(k)


for _name, _fn in (("silu_and_mul", _silu_and_mul), ("gelu_and_mul", _gelu_and_mul),
                   ("fused_add_rms_norm", _fused_add_rms_norm), ("apply_rotary_pos_emb", _apply_rotary_pos_emb)):
    if _name not in MISSING:
        globals()[_name] = _fused(_name, _fn)
'''


def no_device_gems(tmp_path: Path) -> Path:
    """A flag_gems that fails to import the way the real one does on a CPU-only machine."""
    pkg = tmp_path / "nodevice" / "flag_gems"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise RuntimeError({NO_DEVICE + ' ' + chr(10) + ' Please check.'!r})\n")
    return pkg.parent


def fake_gems(tmp_path: Path) -> Path:
    pkg = tmp_path / "fake" / "flag_gems"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(FAKE_GEMS))
    (pkg / "_arch" / "fakearch").mkdir(parents=True)
    (pkg / "_arch" / "fakearch" / "__init__.py").write_text("")
    return pkg.parent


def run_module(out: Path, *args: str, pythonpath: Path | list[Path] | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m tools.optests --out OUT ARGS` in this interpreter, with PYTHONPATH first."""
    extra = pythonpath if isinstance(pythonpath, list) else [pythonpath] if pythonpath else []
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, extra), str(PROJECT_ROOT)]), **(env or {}))
    return subprocess.run([sys.executable, "-m", "tools.optests", "--out", str(out), *args],
                          capture_output=True, text=True, env=full_env, cwd=PROJECT_ROOT, timeout=600)

"""A stand-in for vLLM's cpu build, for the op-test suite on a host without vLLM (tests/optests_fakes.py)."""

__version__ = "0.0.0+fake"

"""Operator tests against float64 references: FlagGems' kernels (on a device) and vLLM's own CPU kernels.

Self-contained (stdlib + torch, with flag_gems and vllm where the image has them; relative imports only)
so it runs inside an image that has nothing else: mount this folder as /opt/flagrelease/optests and run
`PYTHONPATH=/opt/flagrelease python3 -m optests --out DIR`, or from a checkout `python3 -m tools.optests`.
`--list` needs no torch.
"""

SUITE = "op-tests"

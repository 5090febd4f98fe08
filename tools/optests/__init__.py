"""FlagGems operator tests: each op vLLM's models use, FlagGems vs torch against a float64 reference.

Self-contained (stdlib + torch + flag_gems, relative imports only) so it runs inside an image that has
nothing else: mount this folder as /opt/flagrelease/optests and run
`PYTHONPATH=/opt/flagrelease python3 -m optests --out DIR`, or from a checkout `python3 -m tools.optests`.
"""

SUITE = "flaggems-op-tests"

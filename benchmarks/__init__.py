"""blazen_trio's benchmark suite: `python -m benchmarks [--quick] [--json PATH]`.

Kept import-free: the peer subprocesses import `benchmarks._measure` and `benchmarks._peer_llama`
from venvs that have neither trio nor blazen_trio.
"""

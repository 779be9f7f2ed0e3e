"""Peer servers the benchmarks compare vlgraph with, each in its own virtual environment
(``infinity_env.sh``) under ``.cache/vlgraph/peers/`` (git-ignored), started on a free loopback
port by the benchmark that measures them (``infinity.py``)."""

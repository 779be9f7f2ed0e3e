"""vlgraph: vision-language models served on Ray Serve."""

__version__ = "0.1.0"

"""The model side: one module per model family on the replica skeleton (``replica``), and
the HTTP ingress (``ingress``), which alone imports FastAPI or Starlette."""

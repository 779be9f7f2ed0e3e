"""vlgraph: vision-language models served on Ray Serve.

This package holds what the model side (``deployments``) and the HTTP side
(``deployments.ingress``) share, and never imports either of them:

- both sides: ``config`` (typed profiles), ``messages`` and ``errors`` (what travels between
  the ingress and the replicas), ``served_models`` (capabilities and the catalog of served
  models), ``model_calls`` (awaiting handles), ``service_metrics``, ``generation_params``
  (every generation bound, once), ``images`` and ``text_inputs`` (input checks),
  ``model_source`` (where weights come from) and ``tiny`` (the tiny-checkpoint factory);
- the model side alone: ``model_thread``, ``torch_runtime``, ``cpu_allocator``,
  ``vlm_families``, ``flags``;
- the HTTP side alone: ``cache``, ``image_store``, ``image_paths``, ``safe_fetch``, ``tags``;
- commands: ``serve_cli`` (``vlgraph-serve``) and ``profiles``.
"""

__version__ = "0.1.0"

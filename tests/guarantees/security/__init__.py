"""Security suite: hostile input through every route of the session's real ``serve.run``.

Every case is one table row that asserts the exact status and error ``code`` of the standard
body ``{"error": {"code", "message", "request_id"}, "detail"}`` (and a fragment of the
message where it says why). One module per section:

1. ``test_path_traversal``: server-side path traversal on ``/caption`` and ``/batch-caption``
   items;
2. ``test_ssrf``: SSRF through the one route that fetches a URL (``POST /encode_image``'s
   ``image_url``, single and listed), with a local server on ``TEST_IMAGE_HOST`` that
   redirects to forbidden targets and misbehaves (compressed bodies, oversize bodies,
   slowness);
3. ``test_decompression_bombs``: decompression bombs through every image-taking route,
   refused from the header, with the peak memory of the ingress and model replicas measured
   while they are refused;
4. ``test_bodies_and_counts``: oversize and slow bodies over raw sockets, and the
   per-request count limits;
5. ``test_polyglot_files``: polyglot and mislabelled files, and how a stored one is served
   back;
6. ``test_text_limits``: overlong and empty text; 7. ``test_generation_bounds``: diffusion
   bounds; 8. ``test_admin_key``: the admin key;
9. ``test_cors``: CORS closed by default, and opened for exactly one origin by a second,
   small app.

Shared helpers live in ``tests/support/security.py``, shared fixtures in this package's
``conftest.py``. The figures (cases by status across all nine modules, bomb memory growth,
time to a 408) are written once by ``tests.support.guarantees.record_figures("security",
...)`` when the package ends.
"""

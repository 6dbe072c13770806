"""Online extraction with Ray Serve: ``build_app`` (in ``app``), the HTTP API and the deployments.

Run with ``giellm serve --model PATH`` or ``serve run giellm_ray.serve.app:build_app model=PATH``.
Importing this package imports nothing heavy.
"""

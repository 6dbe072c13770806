"""Thin driver: start the GIELLM extraction service on a Ray cluster and block until stopped.

    ray job submit --working-dir . -- python jobs/serve.py --model s3://bucket/model \
        --config jobs/configs/serve/giellm.yaml
    python jobs/serve.py --model PATH --set batching.max_batch_size=32

Same arguments and code path as ``giellm serve`` (SIGTERM or Ctrl-C drains and stops).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # The job's working dir is the repository root: make the package importable from there.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from giellm_ray.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))

"""Fine-tune on a Ray cluster: the same code as ``giellm train``.

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train/giellm-7b.yaml

Connects to the cluster in ``RAY_ADDRESS`` (set by ``ray job submit``), else starts a local Ray.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # The job's working dir is the repository root: make the package importable from there.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from giellm_ray.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))

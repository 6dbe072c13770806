"""The MRE comparison on a Ray cluster: the same code as ``giellm mre``.

    ray job submit --working-dir . -- python jobs/mre.py --data s3://bucket/giellm/mix \
        --config jobs/configs/train/giellm-13b-jp.yaml --score-config jobs/configs/score/gpu.yaml \
        --output s3://bucket/giellm/mre --parallel 2

Connects to the cluster in ``RAY_ADDRESS`` (set by ``ray job submit``), else starts a local Ray.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # The job's working dir is the repository root: make the package importable from there.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from giellm_ray.cli import main

    sys.exit(main(["mre", *sys.argv[1:]]))

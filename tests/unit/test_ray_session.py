"""What a joined Ray cluster's workers are sent of the driver's environment."""

from __future__ import annotations

import json

from giellm_ray.ray_session import JOB_CONFIG_ENV, forwarded_env


def test_forwarded_env_for_a_joined_cluster():
    environ = {
        "HF_TOKEN": "hf_x",
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_ENDPOINT_URL": "http://s3",
        "GIELLM_LOG_LEVEL": "INFO",
        "DS_ACCELERATOR": "cuda",
        "HOME": "/root",
        "PATH": "/bin",
        "SECRET": "no",
    }
    env = forwarded_env(environ)
    assert env["HF_TOKEN"] == "hf_x" and env["AWS_ACCESS_KEY_ID"] == "a"
    assert env["GIELLM_LOG_LEVEL"] == "INFO" and env["DS_ACCELERATOR"] == "cuda"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert not {"HOME", "PATH", "SECRET"} & set(env)
    # Under `ray job submit`, a key the job's runtime env sets is left to it (Ray refuses a merge
    # that sets the same variable twice).
    job = {"runtime_env": {"working_dir": ".", "env_vars": {"HF_TOKEN": "from-job"}}}
    env = forwarded_env({**environ, JOB_CONFIG_ENV: json.dumps(job)})
    assert "HF_TOKEN" not in env and env["AWS_ACCESS_KEY_ID"] == "a"

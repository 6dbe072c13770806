"""The engine choice in the score and serve configs: ``vllm:`` settings resolve to vLLM's engine
arguments per device, a serve replica keeps its own defaults under a partial section, a vLLM actor
or replica must hold exactly its engine's GPUs, and a vLLM actor takes several batches at once."""

from __future__ import annotations

import pytest

from giellm_ray.config import ConfigError, load_config
from giellm_ray.configs import config_path
from giellm_ray.generation.config import VLLMConfig
from giellm_ray.score.config import ScoreConfig
from giellm_ray.serve.config import ServeConfig


def test_vllm_defaults_resolve_per_device():
    gpu = VLLMConfig().engine_kwargs("auto", on_gpu=True)
    assert gpu["dtype"] == "bfloat16" and gpu["gpu_memory_utilization"] == 0.90
    assert gpu["enforce_eager"] is False and gpu["max_num_seqs"] == 256
    assert "max_model_len" not in gpu and "enable_prefix_caching" not in gpu  # vLLM's own
    cpu = VLLMConfig().engine_kwargs("auto", on_gpu=False)
    assert cpu["dtype"] == "float32" and cpu["gpu_memory_utilization"] == 0.10
    assert cpu["enforce_eager"] is True
    own = VLLMConfig(dtype="float16", max_model_len=2048, enforce_eager=True).engine_kwargs(
        "bfloat16", on_gpu=True
    )
    assert own["dtype"] == "float16" and own["max_model_len"] == 2048 and own["enforce_eager"]
    # vllm.dtype: auto means what model.dtype: auto means (bf16 on CUDA, fp32 on CPU)
    for on_gpu, want in ((True, "bfloat16"), (False, "float32")):
        assert VLLMConfig(dtype="auto").engine_kwargs("float16", on_gpu=on_gpu)["dtype"] == want
    assert VLLMConfig().engine_kwargs("float16", on_gpu=True)["dtype"] == "float16"


def test_engine_is_a_checked_choice_and_vllm_keys_are_strict():
    cfg = load_config(ScoreConfig, None, ["engine=vllm", "vllm.max_num_seqs=32"])
    assert cfg.engine == "vllm" and cfg.vllm.max_num_seqs == 32 and cfg.actor_concurrency == 4
    assert load_config(ScoreConfig, None, []).actor_concurrency == 1
    with pytest.raises(ConfigError, match="engine"):
        load_config(ScoreConfig, None, ["engine=trt"])
    with pytest.raises(ConfigError, match="needs engine: vllm"):
        load_config(ScoreConfig, None, ["batches_in_flight=4"])  # the HF engine is not threaded
    with pytest.raises(ConfigError, match="max_num_seq"):
        load_config(ScoreConfig, None, ["vllm.max_num_seq=32"])  # a typo is an error


def test_a_vllm_actor_or_replica_holds_exactly_its_engines_gpus():
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        load_config(ScoreConfig, None, ["engine=vllm", "num_gpus_per_actor=2"])
    ok = load_config(
        ScoreConfig, None, ["engine=vllm", "num_gpus_per_actor=2", "vllm.tensor_parallel_size=2"]
    )
    assert ok.num_gpus_per_actor == 2
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        load_config(ServeConfig, None, ["engine=vllm", "replica.num_gpus=2"])


def test_serve_keeps_its_vllm_defaults_under_a_partial_section():
    cfg = load_config(ServeConfig, None, ["vllm.enforce_eager=true"])
    assert cfg.vllm.max_num_seqs == 128 and cfg.vllm.max_num_batched_tokens == 4096
    assert load_config(ScoreConfig, None, ["vllm.enforce_eager=true"]).vllm.max_num_seqs == 256


def test_shipped_configs_pick_the_engine_by_machine():
    gpu = load_config(ScoreConfig, config_path("score", "gpu.yaml"))
    assert gpu.engine == "vllm" and gpu.num_actors == 8 and gpu.num_gpus_per_actor == 1
    assert gpu.batch_size * gpu.actor_concurrency >= 4 * gpu.vllm.max_num_seqs
    cpu = load_config(ScoreConfig, config_path("score", "cpu.yaml"))
    assert cpu.engine == "hf" and cpu.vllm.enforce_eager
    assert load_config(ServeConfig, config_path("serve", "giellm.yaml")).engine == "hf"

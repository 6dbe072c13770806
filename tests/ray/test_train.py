"""Ray Train + DeepSpeed on 2 CPU workers with the tiny model: loss falls, a worker dies and the
run resumes from its last checkpoint (also when it is killed right after uploading one, before
Ray registers it), ZeRO-3 exports a model that loads and generates, an explicit ``resume_from``
continues an earlier run, and resuming from ``s3://`` fetches each checkpoint file once."""

from __future__ import annotations

import collections
import glob
import json
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from giellm_ray.config import load_config
from giellm_ray.sample import sample_path
from giellm_ray.train.config import ExportConfig, TrainConfig
from giellm_ray.train.driver import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BASE = [
    "epochs=3",
    "lr=1e-2",
    "per_device_batch_size=4",
    "num_workers=2",
    "log_every_steps=1",
    "resources_per_worker={CPU: 0.75}",
    "data.max_length=256",
    "keep_checkpoints=2",
]


def _corpus(tmp_path, rows: int, name: str) -> str:
    """A small memorisable corpus: ``rows`` distinct rows of the shipped sample, repeated x4."""
    table = pq.read_table(sample_path("train")).slice(0, rows)
    path = tmp_path / name
    pq.write_table(pa.concat_tables([table] * 4), path)
    return str(path)


def _cfg(tmp_path, model: str, *extra: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        None,
        [*BASE, f"model.name_or_path={model}", f"storage_path={tmp_path / 'runs'}", *extra],
    )


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, tiny_model_dir, tmp_path_factory):
    """ZeRO-2, 64 rows, 3 epochs; worker 1 raises once at step 7 (after the step-5 checkpoint)."""
    tmp = tmp_path_factory.mktemp("zero2")
    marker = tmp / "failed-once"
    cfg = _cfg(
        tmp,
        tiny_model_dir,
        f"data.train={_corpus(tmp, 16, 'train.parquet')}",
        "zero_stage=2",
        "checkpoint_every_steps=5",
        "max_failures=1",
        "run_name=z2",
        f"fault_injection={{fail_at_step: 7, marker: {marker}, rank: 1}}",
    )
    return cfg, run_training(cfg), marker


@pytest.mark.timeout(240)
def test_zero2_loss_falls_and_failed_worker_resumes(zero2_run):
    cfg, result, marker = zero2_run
    m = result.metrics
    assert marker.exists(), "the fault hook never fired"
    assert m["resumed_from_step"] == 5  # restarted from the last checkpoint, not from scratch
    assert m["step"] == m["total_steps"] == 24  # 64 rows / (2 workers x 4) = 8 steps x 3 epochs
    ckpts = sorted(os.listdir(cfg.run_dir()))
    assert len([c for c in ckpts if c.startswith("checkpoint_2")]) <= cfg.keep_checkpoints
    with open(os.path.join(result.checkpoint, "train_state.json")) as f:
        state = json.load(f)
    assert (state["epoch"], state["batch"], state["step"]) == (3, 0, 24)
    assert m["data_kept"] == 64
    # The final checkpoint is weights-only: a pointer to the export, no optimizer state.
    assert state["weights_only"] and state["export_dir"] == result.export_dir
    assert not glob.glob(os.path.join(result.checkpoint, "**", "*.pt"), recursive=True)
    assert _dir_bytes(result.checkpoint) < 4096


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.timeout(240)
def test_async_upload_leaves_complete_checkpoints_only(zero2_run):
    """The default ``checkpoint_upload_mode: async`` on local storage: every checkpoint left is
    complete (each rank's marker after its files), the kept full one holds both ranks' shards."""
    from giellm_ray.train.checkpoints import checkpoint_dirs, is_complete
    from giellm_ray.train.driver import storage_filesystem

    cfg, result, _ = zero2_run
    assert cfg.checkpoint_upload_mode == "async"
    fs, run_path = storage_filesystem(cfg.run_dir())
    states = [is_complete(fs, d) for d in checkpoint_dirs(fs, run_path)]
    assert all(states) and len(states) == cfg.keep_checkpoints
    full = [
        d
        for d, st in zip(checkpoint_dirs(fs, run_path), states, strict=True)
        if not st["weights_only"]
    ]
    assert len(full) == 1
    shards = glob.glob(os.path.join(full[0], "ds", "*zero_pp_rank_*optim_states.pt"))
    assert len(shards) == 2  # each rank uploaded its own ZeRO-2 optimizer shard


@pytest.mark.timeout(240)
def test_zero2_loss_falls_on_memorisable_corpus(zero2_run):
    _, result, _ = zero2_run
    first, last = result.metrics["first_loss"], result.metrics["final_loss"]
    assert last < 0.6 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"


@pytest.mark.timeout(240)
def test_explicit_resume_continues_earlier_run(zero2_run, tmp_path):
    cfg, result, _ = zero2_run
    more = cfg.model_copy(
        update={
            "epochs": 4,
            "run_name": "z2-more",
            "resume_from": result.checkpoint,
            "fault_injection": None,
            "export": ExportConfig(enabled=False),
        }
    )
    again = run_training(more)
    assert again.metrics["resumed_from_step"] == 24
    assert again.metrics["step"] == 32


@pytest.mark.timeout(240)
def test_zero3_tiny_preset_eval_and_export_loads(ray_cluster, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    eval_path = tmp_path / "eval.parquet"
    pq.write_table(pq.read_table(sample_path("test")).slice(0, 8), eval_path)
    cfg = _cfg(
        tmp_path,
        "tiny",
        f"data.train={_corpus(tmp_path, 8, 'train.parquet')}",
        f"data.eval={eval_path}",
        "zero_stage=3",
        "epochs=1",
        "run_name=z3",
        "checkpoint_upload_mode=sync",
        "eval.metrics=on",  # ZeRO-3 generates only on "on"
        "eval.max_new_tokens=8",
        "eval.batch_size=4",
        "tiny={vocab_size: 600, hidden_size: 32, intermediate_size: 64}",
    )
    result = run_training(cfg)
    m = result.metrics
    assert m["eval_loss"] > 0 and m["eval_target_tokens"] > 0
    counts = json.loads(m["eval_counts"])
    assert sum(c["n"] for c in counts.values()) == 8  # both workers' shards merged
    export = result.export_dir
    assert os.path.exists(os.path.join(export, "model.safetensors"))
    assert os.path.exists(os.path.join(export, "eval", "metrics.json"))
    resolved = load_config(TrainConfig, os.path.join(export, "train_config.yaml"))
    assert resolved.model.name_or_path.endswith("base-model") and resolved.zero_stage == 3
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    assert model.config.hidden_size == 32
    ids = tok(["鈴木一郎の小説は"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # The export is the trained model, not the base: ZeRO-3 shards were gathered, not lost.
    base = AutoModelForCausalLM.from_pretrained(resolved.model.name_or_path)
    diff = [
        not torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters(), strict=True)
    ]
    assert any(diff) and all(p.abs().sum() > 0 for p in model.parameters())


@pytest.mark.timeout(300)
def test_cli_train_shipped_config_from_another_directory(ray_cluster, tmp_path, monkeypatch):
    """``giellm train --config <abs>/tiny-cpu.yaml`` from a directory that is not the clone:
    the config names the shipped sample as ``sample:train``, so nothing is cwd-relative."""
    from pathlib import Path

    from giellm_ray.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GIELLM_LOG_LEVEL", raising=False)  # main() writes it; undone after
    config = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "train" / "tiny-cpu.yaml"
    rc = main(
        [
            "train",
            "--config",
            str(config),
            "--set",
            "max_steps=2",
            "--set",
            "storage_path=runs",
            "--set",
            "data.eval=null",
            "--set",
            "checkpoint_every_steps=null",
            "--set",
            "log_every_steps=1",
        ]
    )
    assert rc == 0
    export = tmp_path / "runs" / "tiny-cpu" / "export"
    assert (export / "model.safetensors").is_file() and (export / "train_config.yaml").is_file()
    resolved = load_config(TrainConfig, str(export / "train_config.yaml"))
    assert resolved.data.train == sample_path("train") and resolved.max_steps == 2


@pytest.mark.timeout(600)  # two worker groups; 3-6 min on a loaded 2-core machine
def test_worker_killed_after_checkpoint_upload_resumes_from_it(
    ray_cluster, tiny_model_dir, tmp_path
):
    """Rank 1 is SIGKILLed once the epoch-1 checkpoint (step 8) is fully in storage but before its
    report reaches Ray's controller: Ray never registers it, the restarted group finds it complete
    in the run directory and resumes there (not at step 0), and the driver removes it afterwards
    (``keep_checkpoints: 1``: only the final checkpoint is Ray's to keep)."""
    marker = tmp_path / "killed-once"
    cfg = _cfg(
        tmp_path,
        tiny_model_dir,
        f"data.train={_corpus(tmp_path, 16, 'train.parquet')}",
        "zero_stage=2",
        "epochs=2",
        "max_failures=1",
        "run_name=z2-kill",
        "keep_checkpoints=1",
        "export=false",
        f"fault_injection={{fail_at_step: 8, marker: {marker}, rank: 1, "
        "mode: kill_after_checkpoint}",
    )
    result = run_training(cfg)
    m = result.metrics
    assert marker.exists(), "the kill hook never fired"
    assert m["resumed_from_step"] == 8
    assert m["step"] == m["total_steps"] == 16
    left = sorted(
        d
        for d in os.listdir(cfg.run_dir())
        if d.startswith("checkpoint_") and os.path.isdir(os.path.join(cfg.run_dir(), d))
    )
    assert left == [os.path.basename(result.checkpoint)]  # the orphan is gone
    # export: false, so the final checkpoint carries the weights, but still no optimizer state.
    assert os.path.isfile(os.path.join(result.checkpoint, "model.safetensors"))
    assert not glob.glob(os.path.join(result.checkpoint, "**", "*.pt"), recursive=True)


@pytest.fixture
def counting_s3(s3_server):
    """A second moto endpoint over the same in-process buckets that counts the bytes each GET
    serves per object path (``/bucket/key``)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    served: collections.Counter = collections.Counter()
    app = DomainDispatcherApplication(create_backend_app)

    def counting(environ, start_response):
        body = app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET":
            return body
        path = environ.get("PATH_INFO", "")

        def stream():
            for chunk in body:
                served[path] += len(chunk)
                yield chunk

        return stream()

    server = make_server(
        "127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", served
    server.shutdown()
    thread.join()


@pytest.mark.timeout(600)
def test_resume_from_s3_fetches_each_checkpoint_file_once(zero2_run, counting_s3, monkeypatch):
    """Two workers on one node resume from an ``s3://`` checkpoint: every DeepSpeed file is served
    exactly once (the shared model states once per node, each optimizer shard only to its rank).
    Before, each rank built its own ``Checkpoint`` and downloaded all of it: twice here."""
    import pyarrow.fs as pafs

    from giellm_ray import io
    from giellm_ray.train.checkpoints import checkpoint_dirs, is_complete
    from giellm_ray.train.driver import storage_filesystem

    endpoint, served = counting_s3
    monkeypatch.setenv("GIELLM_S3_ENDPOINT_URL", endpoint)  # the driver's native S3 client
    cfg, _, _ = zero2_run
    fs, run_path = storage_filesystem(cfg.run_dir())
    full = [d for d in checkpoint_dirs(fs, run_path) if not is_complete(fs, d)["weights_only"]][0]
    step = is_complete(fs, full)["step"]  # the last mid-run checkpoint kept (step 20)
    dest = "s3://giellm-test/resume-count/ckpt"
    s3, key = io.resolve_native(dest)
    pafs.copy_files(full, key, source_filesystem=fs, destination_filesystem=s3)
    served.clear()
    more = cfg.model_copy(
        update={
            "run_name": "z2-s3",
            "resume_from": dest,
            "max_steps": step + 1,
            "trust_checkpoint": True,
            "fault_injection": None,
            "export": ExportConfig(enabled=False),
            "checkpoint_every_steps": None,
        }
    )
    again = run_training(more)
    assert again.metrics["resumed_from_step"] == step and again.metrics["step"] == step + 1
    sizes = {
        f"/giellm-test/resume-count/ckpt/{os.path.relpath(os.path.join(d, f), full)}": os.path.getsize(
            os.path.join(d, f)
        )
        for d, _, names in os.walk(full)
        for f in names
        if os.path.relpath(d, full).startswith("ds")
    }
    assert len(sizes) == 3  # mp_rank_00_model_states.pt + two optimizer shards
    assert {p: served[p] for p in sizes} == sizes


@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_zero3_two_steps_on_gpu(ray_cluster, tiny_model_dir, tmp_path):
    """Two ZeRO-3 optimizer steps on one GPU worker (NCCL, BF16, FusedAdam), then the export.

    What it checks, with the arithmetic: the tiny Llama has P = 1500 x 64 (tied embeddings and
    head) + 2 x (4 x 64^2 + 3 x 64 x 256) (two layers) ~ 0.23M parameters. BF16 weights are 2 B
    each, so the exported ``model.safetensors`` is ~2P B (~0.46 MB; FP32 would be twice that).
    ZeRO-3 state on one rank is 2P (params) + 2P (grads) + 12P (FP32 master, Adam m and v)
    = 16P ~ 3.7 MB; activations for 4 x <=256 tokens with a 1500-word vocabulary are a few MB, so
    rank 0's peak CUDA allocation stays far below 1 GiB. NCCL serves CUDA tensors only, even
    with one rank: every metric reduce runs on the GPU here, or the run fails at its first log.
    """
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (a ZeRO-3 step with NCCL and FusedAdam); this machine has none")
    from safetensors import safe_open

    cfg = _cfg(
        tmp_path,
        tiny_model_dir,
        f"data.train={_corpus(tmp_path, 8, 'train.parquet')}",
        "zero_stage=3",
        "use_gpu=true",
        "num_workers=1",
        "max_steps=2",
        "epochs=1",
        "resources_per_worker={CPU: 1, GPU: 1}",
        "run_name=z3-gpu",
    )
    assert cfg.resolved_precision() == "bf16"
    result = run_training(cfg)
    m = result.metrics
    assert m["step"] == m["total_steps"] == 2 and m["final_loss"] > 0
    assert 0 < m["peak_gpu_mb_rank0"] < 1024
    path = os.path.join(result.export_dir, "model.safetensors")
    with safe_open(path, framework="pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 (safe_open has no iterator)
    n_params = sum(t.numel() for t in tensors)
    assert {t.dtype for t in tensors} == {torch.bfloat16}
    assert 2 * n_params <= os.path.getsize(path) < 2 * n_params + 64 * 1024

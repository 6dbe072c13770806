"""GPU rehearsal: the project's whole GPU path on one GPU, no downloads, JSON lines, < 8 minutes.

    python -m benchmarks.gpu_rehearsal [--workdir DIR] [--keep] [--phases a,b,...] [--disk-reserve-gb N]
    python -m benchmarks.gpu_rehearsal --smoke     # the same phases on CPU with a tiny model

Builds a random-init Llama of ~1.1B parameters in bf16 (TinyLlama's width: hidden 2048, MLP 5632,
22 layers, 32 heads, no grouped KV, so its KV cache behaves like 13B's) with a byte-level BPE
tokenizer trained here (``giellm_ray.model.tiny.train_tokenizer``) on the shipped sample, then
drives each phase through the public commands only (``giellm train --config YAML``, ``giellm
score ... --set k=v``, ``giellm serve ...``), each in its own process group with its own Ray:

  phase             what                                                   budget (H100/H200)
  setup             tokenizer, 1.1B model (built on the GPU), data                 30 s
  train_zero3       ZeRO-3 bf16, 1 worker, 30 steps x 8 rows x ~300 tokens,        90 s
                    final checkpoint + HF export
  train_zero2_kill  ZeRO-2, checkpoint every 10 steps, SIGKILLed (whole process    60 s
                    group) as soon as the second checkpoint starts
  resume_zero2      ``resume_from`` the first checkpoint, finishes the 30 steps    60 s
  export            the ZeRO-3 export loads with transformers, differs from the    15 s
                    base weights, runs a forward pass
  score_hf          ``giellm score`` 2,000 rows, ``--set engine=hf``               60 s
  score_vllm        the same with ``--set engine=vllm`` ("skipped: <reason>"       90 s
                    when ScoreConfig has no ``engine`` key yet)
  serve             ``giellm serve``, 200 requests at 16 concurrent                55 s
                                                                          total   460 s

Each phase prints one JSON line: ``status`` (``ok``, ``error``, ``skipped: <reason>``), seconds,
peak GPU memory (NVML, whole device) and where they apply: training tokens/s (median of the
loop's logged windows after the first; windows after a checkpoint include its write) and MFU
(6N + 12·L·h·s FLOPs per token against the device's dense BF16 peak, ``giellm_ray/perf.py``); decode
tokens/s (score: generated tokens over the whole job, start-up included, as ``_score.json``
reports; serve: over the load) against the HBM roofline (decode batch x bandwidth / weight bytes,
KV reads ignored: the engine's mean decode batch for score, the client concurrency for serve).
A failing phase prints its error (the log's tail) and the next phase
runs; later phases fall back to the base model if training failed.

Disk. A lent machine has 64 GiB (68.7 GB) in all, OS and image included. Every byte the phases
write lies under the workdir (checkpoint staging too: ``WORKDIR/staging``). For the 1.1B model
(P = 22 x (4 x 2048^2 + 3 x 2048 x 5632) + 2 x 8000 x 2048 = 1.16e9 parameters): bf16 weights
W = 2P = 2.33 GB; a full ZeRO-2 checkpoint C = 2P + 12P (fp32 master, momentum, variance) =
16.3 GB, written to staging, then uploaded to ``runs/`` (the staged copy is deleted after it):

  after setup          base model W                                                2.3 GB
  train_zero3          + export W (+ its staged gather W); checkpoints deleted     4.7 GB, peak 7.0
  train_zero2_kill     killed as checkpoint 2's upload starts (the script polls
                       every 0.1 s): 2W + C (checkpoint 1) + C (checkpoint 2, staged)  37.2 GB
                       (bound, had the kill come as that upload ended: + C =      53.5 GB)
  after the kill       checkpoint 2 removed, stored and staged: 2W + C            20.9 GB
  resume_zero2         checkpoint 1 is read where it lies (local storage is not
                       staged); + 2W (the final weights-only checkpoint, staged
                       and uploaded)                                             25.6 GB peak
  after resume         both runs removed                                           4.7 GB

The killed run's staged checkpoint (up to C) is removed by this script: the resume runs under
another name, so the trainer's clean-up (by run name) never sees it, and it would stay on the disk
for every later phase (the resume's peak 41.9 GB instead of 25.6). In ``--smoke`` (P = 259k,
fp32, phases train_zero2_kill and resume_zero2 only: W = 4P = 1.04 MB, C = W + 12P = 4.15 MB,
measured 4.23 MB) the workdir held 9.69 MB at the kill (W + 2C = 9.34, plus data and logs),
5.46 MB after the clean-up (W + C = 5.19) and peaked at 0.007 GB in the resume (W + C + 2W =
7.3 MB); the staged copy of so small a checkpoint is uploaded and deleted before the kill, so
there it was 0 bytes. Before each phase the free disk is checked against that phase's growth
(from the table: setup W, train_zero3 2W, train_zero2_kill 3C, resume_zero2 2W, 1 GB for the
others) plus ``--disk-reserve-gb`` (default 5 GB for the OS and logs): a phase that would not fit
is an error naming both figures, not an ENOSPC halfway. Each phase's JSON line has
``disk_free_gb`` (at its start) and ``peak_disk_gb`` (the workdir's size, sampled every 0.5 s);
the summary has the run's ``peak_disk_gb``. Without
DeepSpeed's FusedAdam prebuilt (the Dockerfile builds it) the first training phase also JIT-
compiles it (~1-2 min). ``--smoke``: CPU, hidden 64, 2 layers, fp32, 100 rows, 20 requests at 4.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import ROOT, emit
from giellm_ray.perf import decode_roofline_tokens_per_s, lookup, mfu

SAMPLE = ROOT / "giellm_ray" / "resources" / "sample"
CONFIGS = ROOT / "jobs" / "configs"
PHASES = (
    "train_zero3",
    "train_zero2_kill",
    "resume_zero2",
    "export",
    "score_hf",
    "score_vllm",
    "serve",
)
GPU_SIZES = dict(
    model=dict(hidden=2048, mlp=5632, layers=22, heads=32, vocab=8000),
    batch=8,
    steps=30,
    rows=2000,
    requests=200,
    concurrency=16,
    new_tokens=32,
    timeout=300,
)
SMOKE_SIZES = dict(
    model=dict(hidden=64, mlp=256, layers=2, heads=4, vocab=1000),
    batch=4,
    steps=30,
    rows=100,
    requests=20,
    concurrency=4,
    new_tokens=16,
    timeout=300,
)
ROW_TOKENS = 300  # training rows join sample prompts up to this length, like 13B SFT steps


class PeakMemory:
    """Samples device memory in use (NVML or nvidia-smi) every 0.2 s while a phase runs."""

    def __init__(self, gpu: bool):
        self.gpu, self.peak, self._stop = gpu, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used_gb(self) -> float:
        index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        try:  # NVML (nvidia-ml-py, a vLLM dependency) needs no subprocess per sample
            import pynvml

            pynvml.nvmlInit()
            handle = (
                pynvml.nvmlDeviceGetHandleByIndex(int(index))
                if index.isdigit()
                else pynvml.nvmlDeviceGetHandleByUUID(index)
            )
            return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30
        except Exception:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=memory.used",
                    "--format=csv,noheader,nounits",
                    "-i",
                    index,
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return float(out.stdout.split()[0]) / 1024 if out.returncode == 0 else 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._used_gb())

    def __enter__(self) -> PeakMemory:
        if self.gpu:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def record(self) -> dict:
        return {"peak_gpu_mem_gb": round(self.peak, 2)} if self.gpu else {}


def tree_bytes(path: Path) -> int:
    """Bytes a directory tree takes on disk (allocated blocks; 0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


class PeakDisk:
    """Samples the workdir's size every 0.5 s while a phase runs (``observe`` adds a sample)."""

    def __init__(self, path: Path):
        self.path, self.peak, self._stop = path, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def observe(self) -> int:
        used = tree_bytes(self.path)
        self.peak = max(self.peak, used)
        return used

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.observe()

    def __enter__(self) -> PeakDisk:
        self.observe()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.observe()


class Rehearsal:
    """Runs the phases in order; each one's outcome becomes a JSON line."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.smoke = args, args.smoke
        self.sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="giellm-rehearsal-")).resolve()
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.staging = (
            self.work / "staging"
        )  # checkpoint staging: counted and cleaned with the rest
        self.reserve = (
            args.disk_reserve_gb if args.disk_reserve_gb is not None else 0.0 if args.smoke else 5.0
        ) * 1e9
        self.disk: PeakDisk | None = None
        self.peak_disk = 0
        # A private, short Ray temp dir: each phase starts its own local Ray and never joins
        # another cluster on this machine (ray.init reads <RAY_TMPDIR>/ray/ray_current_cluster).
        self.ray_tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GIELLM_STORAGE")
        }
        self.env.update(
            RAY_TMPDIR=self.ray_tmp,
            RAY_USAGE_STATS_ENABLED="0",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        if self.smoke:
            self.env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
        elif self.env.get("DS_ACCELERATOR") == "cpu":  # e.g. inherited from the test suite
            del self.env["DS_ACCELERATOR"]
        self.gpu = not self.smoke and _cuda_available()
        self.device = _device_name() if self.gpu else "cpu"
        self.info: dict = {}
        self.model = self.base = None
        self.failed = 0

    # -- process handling -------------------------------------------------------------------
    def launch(self, name: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(
            argv,
            cwd=self.work,
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return proc, log

    def finish(self, proc: subprocess.Popen, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise TimeoutError(f"timed out after {timeout:.0f} s") from None

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the phase's process group, then any process of this run's Ray left over."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
        self.reap()

    def reap(self) -> None:
        """Kill processes whose command line names this run's private Ray temp dir (ours only)."""
        import psutil

        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.info["pid"] != os.getpid() and self.ray_tmp in " ".join(p.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    p.kill()

    def giellm(self, name: str, *argv: str, timeout: float | None = None) -> tuple[int, str]:
        proc, log = self.launch(name, [sys.executable, "-m", "giellm_ray.cli", *argv])
        rc = self.finish(proc, timeout or self.sizes["timeout"])
        self.reap()
        return rc, log.read_text(errors="replace")

    # -- phases -----------------------------------------------------------------------------
    def disk_need(self, name: str) -> float:
        """Bytes a phase adds to the disk at its peak (the docstring's table)."""
        shape, smoke = self.sizes["model"], self.smoke
        params = self.info.get("params") or (  # before setup: the shape's count, untied embeddings
            shape["layers"] * (4 * shape["hidden"] ** 2 + 3 * shape["hidden"] * shape["mlp"])
            + 2 * shape["vocab"] * shape["hidden"]
        )
        w = params * (4 if smoke else 2)  # weights: fp32 in --smoke, else bf16
        c = w + 12 * params  # a full checkpoint: weights + fp32 master, Adam momentum, variance
        return {
            "setup": w,
            "train_zero3": 2 * w,
            "train_zero2_kill": 3 * c,
            "resume_zero2": 2 * w,
        }.get(name, 1e9)

    def run_phase(self, name: str, fn) -> None:
        start = time.monotonic()
        free, need = shutil.disk_usage(self.work).free, self.disk_need(name)
        disk = {"disk_free_gb": round(free / 1e9, 2), "disk_need_gb": round(need / 1e9, 3)}
        if free < need + self.reserve:  # an error now beats ENOSPC halfway through the phase
            self.failed += 1
            emit(
                {
                    "phase": name,
                    "status": "error",
                    **disk,
                    "error": f"not enough disk: {free / 1e9:.2f} GB free under {self.work}, the "
                    f"phase needs ~{need / 1e9:.2f} GB + {self.reserve / 1e9:.1f} GB "
                    "reserve (--disk-reserve-gb)",
                    "seconds": 0.0,
                }
            )
            return
        with PeakMemory(self.gpu) as mem, PeakDisk(self.work) as self.disk:
            try:
                record = {"status": "ok", **(fn() or {})}
            except Exception as exc:  # one phase's failure must not stop the others
                record = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[-2000:]}
                self.failed += 1
        self.peak_disk = max(self.peak_disk, self.disk.peak)
        emit(
            {
                "phase": name,
                **record,
                "seconds": round(time.monotonic() - start, 1),
                **mem.record(),
                **disk,
                "peak_disk_gb": round(self.disk.peak / 1e9, 3),
            }
        )

    def drop_staging(self, run: str) -> int:
        """Remove a run's checkpoint staging directory; the bytes it held."""
        path = self.staging / f"giellm-{run}"  # giellm_ray.train.loop's name for it
        held = tree_bytes(path)
        shutil.rmtree(path, ignore_errors=True)
        return held

    def setup(self) -> dict:
        proc, log = self.launch(
            "setup",
            [
                sys.executable,
                "-m",
                "benchmarks.gpu_rehearsal",
                "--_build",
                str(self.work),
                json.dumps(self.sizes["model"]),
                str(self.sizes["batch"] * self.sizes["steps"]),
                str(self.sizes["rows"]),
            ]
            + (["--smoke"] * self.smoke),
        )
        if self.finish(proc, self.sizes["timeout"]) != 0:
            raise RuntimeError(log.read_text(errors="replace")[-2000:])
        self.info = json.loads((self.work / "model_info.json").read_text())
        self.model = self.base = str(self.work / "base-model")
        return self.info

    def train_yaml(self, run: str, stage: int, **extra) -> Path:
        cfg = {
            "model": {"name_or_path": self.base, "dtype": "float32" if self.smoke else "bfloat16"},
            "data": {
                "train": str(self.work / "train.parquet"),
                "eval": None,
                "max_length": 1024,
                "overlong": "truncate_prompt_left",
            },
            "run_name": run,
            "storage_path": str(self.work / "runs"),
            "epochs": 1,
            "lr": 1e-4,
            "per_device_batch_size": self.sizes["batch"],
            "grad_accum": 1,
            "zero_stage": stage,
            "precision": "fp32" if self.smoke else "bf16",
            "num_workers": 1,
            "use_gpu": self.gpu,
            "resources_per_worker": {"CPU": 1},
            "max_failures": 0,
            "log_every_steps": 5,
            "keep_checkpoints": 3,
            "checkpoint_staging_dir": str(self.staging),
            **extra,
        }
        path = self.work / f"{run}.yaml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return path

    def train_metrics(self, log: str) -> dict:
        lines = [json.loads(m) for m in re.findall(r"\[train\] (\{.*\})\s*$", log, re.M)]
        rates = [x["tokens_per_s"] for x in lines if "tokens_per_s" in x]
        steady = statistics.median(rates[1:] or rates) if rates else 0.0  # window 1 warms up
        flops = (
            6 * self.info["params"]
            + 12 * self.info["layers"] * self.info["hidden"] * self.info["mean_row_tokens"]
        )
        m = mfu(flops, steady, self.device) if self.gpu else None
        return {
            "steps": max((x.get("step", 0) for x in lines), default=0),
            "tokens_per_s": round(steady, 1),
            "mfu": round(m, 4) if m is not None else None,
            **({} if m is not None else {"mfu_note": f"unknown device: {self.device}"}),
        }

    def train_zero3(self) -> dict:
        rc, log = self.giellm(
            "train_zero3", "train", "--config", str(self.train_yaml("zero3", 3, export=True))
        )
        if rc != 0:
            raise RuntimeError(log[-2000:])
        export = self.work / "runs" / "zero3" / "export"
        if not (export / "config.json").exists():
            raise RuntimeError(f"no HF export in {export}: {log[-1000:]}")
        self.model = str(export)
        for ckpt in _checkpoints(self.work / "runs" / "zero3"):
            shutil.rmtree(ckpt, ignore_errors=True)  # only the export is used from here on
        self.drop_staging("zero3")
        return self.train_metrics(log)

    def train_zero2_kill(self) -> dict:
        cfg = self.train_yaml("zero2", 2, export=False, checkpoint_every_steps=10)
        proc, log = self.launch(
            "train_zero2_kill",
            [sys.executable, "-m", "giellm_ray.cli", "train", "--config", str(cfg)],
        )
        run_dir, deadline = self.work / "runs" / "zero2", time.monotonic() + self.sizes["timeout"]
        # A second checkpoint dir exists only after the first was reported, i.e. persisted.
        while len(_checkpoints(run_dir)) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill(proc)
                raise RuntimeError(
                    f"no second checkpoint before exit/timeout: "
                    f"{log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.1)
        self.kill(proc)
        at_kill = self.disk.observe()
        ckpts = _checkpoints(run_dir)
        # Only the first is known complete. The killed run's staging (checkpoint 2, staged) is
        # never cleaned by the resume, which runs under another name.
        for extra in ckpts[1:]:
            shutil.rmtree(extra, ignore_errors=True)
        staged = self.drop_staging("zero2")
        return {
            "killed": "SIGKILL to the process group",
            "checkpoints_at_kill": [p.name for p in ckpts],
            "checkpoint_bytes": tree_bytes(ckpts[0]),
            "disk_at_kill_bytes": at_kill,
            "killed_staging_removed_bytes": staged,
            "disk_after_cleanup_bytes": self.disk.observe(),
            **self.train_metrics(log.read_text(errors="replace")),
        }

    def resume_zero2(self) -> dict:
        run_dir = self.work / "runs" / "zero2"
        ckpts = _checkpoints(run_dir)
        if not ckpts:
            raise RuntimeError("no checkpoint to resume from (train_zero2_kill failed)")
        for extra in ckpts[1:]:  # possibly partial; only the first is known complete
            shutil.rmtree(extra, ignore_errors=True)
        # Only the final checkpoint: the resume itself is what this phase checks.
        cfg = self.train_yaml(
            "zero2-resumed", 2, export=False, keep_checkpoints=1, resume_from=str(ckpts[0])
        )
        rc, log = self.giellm("resume_zero2", "train", "--config", str(cfg))
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(self.work / "runs" / "zero2-resumed", ignore_errors=True)
        self.drop_staging("zero2-resumed")
        if rc != 0:
            raise RuntimeError(log[-2000:])
        m = re.search(r"resumed at epoch (\d+) batch (\d+) step (\d+)", log)
        metrics = self.train_metrics(log)
        if metrics["steps"] != self.sizes["steps"]:
            raise RuntimeError(
                f"resumed run ended at step {metrics['steps']}, expected "
                f"{self.sizes['steps']}: {log[-1000:]}"
            )
        return {
            "resumed_from": ckpts[0].name,
            "resumed_at_step": int(m[3]) if m else None,
            **metrics,
        }

    def export(self) -> dict:
        if self.model == self.base:
            raise RuntimeError("no export to check (train_zero3 did not write one)")
        proc, log = self.launch(
            "export",
            [
                sys.executable,
                "-m",
                "benchmarks.gpu_rehearsal",
                "--_check-export",
                self.model,
                self.base,
            ]
            + (["--smoke"] * self.smoke),
        )
        if self.finish(proc, self.sizes["timeout"]) != 0:
            raise RuntimeError(log.read_text(errors="replace")[-2000:])
        return json.loads(log.read_text().strip().splitlines()[-1])

    def score(self, engine: str) -> dict:
        config = CONFIGS / "score" / ("cpu.yaml" if self.smoke else "gpu.yaml")
        common = [
            "score",
            "--config",
            str(config),
            "--model",
            self.model,
            "--set",
            "num_actors=1",
            "--set",
            f"num_cpus_per_actor={1 if self.smoke else 4}",
            "--set",
            f"generation.max_new_tokens={self.sizes['new_tokens']}",
            "--set",
            "progress_interval_s=0",
            "--set",
            "progress_bars=false",
        ]
        # Probe with a missing input: a config error (unknown key) comes before any input check.
        rc, out = self.giellm(
            f"score_{engine}_probe",
            *common,
            "--set",
            f"engine={engine}",
            "--input",
            str(self.work / "missing.parquet"),
            "--output",
            str(self.work / "probe"),
            timeout=120,
        )
        rejected = rc != 0 and re.search(r"engine: unknown key", out)
        if rejected and engine != "hf":
            return {
                "status": "skipped: ScoreConfig rejects `engine` (unknown key); the vLLM "
                "engine is not in this checkout"
            }
        if engine == "vllm" and not self.gpu:
            return {"status": "skipped: no CUDA (smoke run on CPU; vLLM needs a GPU)"}
        out_dir = self.work / f"scored-{engine}"
        argv = [*common, "--input", str(self.work / "score.parquet"), "--output", str(out_dir)]
        rc, log = self.giellm(
            f"score_{engine}", *argv, *([] if rejected else ["--set", f"engine={engine}"])
        )
        if rc != 0:
            raise RuntimeError(log[-2000:])
        s = json.loads((out_dir / "_score.json").read_text())
        eng = s.get("engine", {})
        batch = (
            eng.get("decode_slot_steps", 0) / eng["decode_steps"]
            if eng.get("decode_steps")
            else None
        )
        record = {
            "engine": engine if not rejected else "default (no `engine` key in ScoreConfig)",
            "rows": s["output_rows"],
            "rows_per_s": round(s["rows_per_s"], 1),
            "decode_tok_s": round(s["generated_tokens_per_s"], 1),
            "mean_decode_batch": round(batch, 1) if batch else None,
        }
        return {**record, **self.roofline(s["generated_tokens_per_s"], batch)}

    def roofline(self, tok_s: float, batch: float | None) -> dict:
        if not self.gpu or not batch:
            return {
                "roofline_note": f"no HBM roofline for {self.device}"
                if not self.gpu
                else "engine reports no decode batch"
            }
        roof = decode_roofline_tokens_per_s(self.info["weight_bytes"], batch, self.device)
        if roof is None:
            return {"roofline_note": f"unknown device: {self.device}"}
        return {"roofline_tok_s": round(roof, 1), "roofline_fraction": round(tok_s / roof, 4)}

    def serve(self) -> dict:
        config = CONFIGS / "serve" / ("giellm.yaml" if self.smoke else "giellm-gpu.yaml")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc, log = self.launch(
            "serve",
            [
                sys.executable,
                "-m",
                "giellm_ray.cli",
                "serve",
                "--config",
                str(config),
                "--model",
                self.model,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--set",
                "replica.min_replicas=1",
                "--set",
                "replica.max_replicas=1",
                "--set",
                f"replica.num_cpus={0.5 if self.smoke else 2}",
                "--set",
                "ingress.num_replicas=1",
                "--set",
                "ingress.num_cpus=0.1",
            ],
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_http(f"{url}/v1/tasks", proc, self.sizes["timeout"])
            result = self._load(url)
        except Exception as exc:
            raise RuntimeError(f"{exc}: {log.read_text(errors='replace')[-1500:]}") from None
        finally:
            try:
                os.kill(proc.pid, signal.SIGTERM)  # drains in-flight requests, then stops
                proc.wait(timeout=90)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            self.kill(proc)
        return result

    def _load(self, url: str) -> dict:
        import pyarrow.parquet as pq

        rows = pq.read_table(SAMPLE / "test.parquet", columns=["text", "dataset"]).to_pylist()
        n, conc = self.sizes["requests"], self.sizes["concurrency"]

        def one(i: int) -> tuple[int, float, int]:
            body = json.dumps({**rows[i % len(rows)], "max_new_tokens": self.sizes["new_tokens"]})
            req = urllib.request.Request(
                f"{url}/v1/extract",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    data = json.loads(r.read())
                    return r.status, time.monotonic() - t0, data.get("num_generated_tokens", 0)
            except urllib.error.HTTPError as e:
                return e.code, time.monotonic() - t0, 0

        start = time.monotonic()
        with ThreadPoolExecutor(conc) as pool:
            results = list(pool.map(one, range(n)))
        wall = time.monotonic() - start
        lat = sorted(r[1] for r in results)
        tokens = sum(r[2] for r in results)
        ok = sum(r[0] == 200 for r in results)
        record = {
            "requests": n,
            "concurrency": conc,
            "status_200": ok,
            "req_per_s": round(n / wall, 2),
            "p50_s": round(lat[len(lat) // 2], 3),
            "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
            "decode_tok_s": round(tokens / wall, 1),
        }
        if ok != n:
            raise RuntimeError(f"{n - ok} of {n} requests failed: {record}")
        return {**record, **self.roofline(tokens / wall, conc)}

    def run(self) -> int:
        emit(
            {
                "phase": "device",
                "device": self.device,
                "smoke": self.smoke,
                "peak": (
                    dataclasses.asdict(lookup(self.device))
                    if lookup(self.device)
                    else f"unknown device: {self.device}"
                ),
                "workdir": str(self.work),
            }
        )
        wanted = self.args.phases.split(",") if self.args.phases else list(PHASES)
        start = time.monotonic()
        try:
            self.run_phase("setup", self.setup)
            for name in PHASES if self.info else ():
                if name in wanted:
                    fn = (
                        (lambda e=name[len("score_") :]: self.score(e))
                        if name.startswith("score_")
                        else getattr(self, name)
                    )
                    self.run_phase(name, fn)
        finally:  # also on Ctrl-C: no Ray of ours left running, no temp dirs left behind
            self.reap()
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            if not self.args.keep and not self.args.workdir:
                shutil.rmtree(self.work, ignore_errors=True)
        total = time.monotonic() - start
        budget = None if self.smoke else self.args.budget_s  # the budget is for one H100/H200
        emit(
            {
                "phase": "summary",
                "seconds": round(total, 1),
                "budget_s": budget,
                "within_budget": None if budget is None else total <= budget,
                "failed_phases": self.failed,
                "peak_disk_gb": round(self.peak_disk / 1e9, 3),
                "disk_reserve_gb": round(self.reserve / 1e9, 1),
                "logs": str(self.logs) if self.args.keep or self.args.workdir else "removed",
            }
        )
        return 1 if self.failed else 0


def _checkpoints(run_dir: Path) -> list[Path]:
    """Ray Train's checkpoint directories of a run, oldest first (names carry the time)."""
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _device_name() -> str:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
    )
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else "cuda"


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"giellm serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def build(work: Path, shape: dict, train_rows: int, score_rows: int, smoke: bool) -> None:
    """The base model, tokenizer and Parquet inputs, in a child process (keeps CUDA out of the
    parent): ``base-model/``, ``train.parquet`` (sample texts joined to ~ROW_TOKENS tokens),
    ``score.parquet`` (the sample's test rows repeated), ``model_info.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from giellm_ray.model.tiny import tokenizer_texts, train_tokenizer

    start = time.monotonic()
    train = pq.read_table(SAMPLE / "train.parquet").to_pylist()
    test = pq.read_table(SAMPLE / "test.parquet")
    tok = train_tokenizer(
        tokenizer_texts(
            [r[c] for r in train for c in ("prompt", "target")] + test.column("prompt").to_pylist()
        ),
        shape["vocab"],
    )
    tok.model_max_length = 2048
    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape["hidden"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    dtype = torch.float32 if smoke else torch.bfloat16
    with torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu"):
        model = LlamaForCausalLM(conf).to(dtype)  # random init on the GPU: seconds, not minutes
    model.save_pretrained(work / "base-model")
    tok.save_pretrained(work / "base-model")
    params = sum(p.numel() for p in model.parameters())

    rows, lengths, i = [], [], 0
    for _ in range(train_rows):
        texts, length = [], 0
        while length < ROW_TOKENS:  # earlier texts, then one row's own prompt and target
            row, i = train[i % len(train)], i + 1
            texts.append(row["text"])
            length = len(tok("".join(texts[:-1]) + row["prompt"] + row["target"]).input_ids) + 1
        rows.append({"prompt": "".join(texts[:-1]) + row["prompt"], "target": row["target"]})
        lengths.append(length)
    pq.write_table(pa.Table.from_pylist(rows), work / "train.parquet")
    picked = test.take([i % test.num_rows for i in range(score_rows)])
    ids = [f"{x}-{i}" for i, x in enumerate(picked.column("id").to_pylist())]
    pq.write_table(
        picked.set_column(picked.schema.get_field_index("id"), "id", pa.array(ids)),
        work / "score.parquet",
    )
    info = {
        "params": params,
        "params_b": round(params / 1e9, 3),
        "layers": shape["layers"],
        "hidden": shape["hidden"],
        "vocab": len(tok),
        "dtype": str(dtype).split(".")[-1],
        "weight_bytes": params * (4 if smoke else 2),
        "train_rows": len(rows),
        "mean_row_tokens": round(sum(lengths) / len(lengths), 1),
        "score_rows": score_rows,
        "build_s": round(time.monotonic() - start, 1),
    }
    (work / "model_info.json").write_text(json.dumps(info))


def check_export(export: str, base: str, smoke: bool) -> None:
    """Load the HF export as a user would, compare it with the base weights, run a forward."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    dtype = torch.float32 if smoke else torch.bfloat16
    start = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(export, dtype=dtype).to(device).eval()
    load_s = time.monotonic() - start
    before = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).state_dict()
    after = model.state_dict()
    if set(before) != set(after) or any(before[k].shape != after[k].shape for k in before):
        raise SystemExit(f"export and base differ in layout: {set(before) ^ set(after)}")
    changed = sum(not torch.equal(before[k], after[k].cpu()) for k in before)
    tok = AutoTokenizer.from_pretrained(export)
    batch = tok("鈴木一郎の小説は名古屋市の中央博物館で朗読された。", return_tensors="pt").to(
        device
    )
    with torch.no_grad():
        logits = model(**batch).logits
    if not torch.isfinite(logits).all() or changed == 0:
        raise SystemExit(
            f"bad export: finite={bool(torch.isfinite(logits).all())}, changed tensors={changed}"
        )
    print(
        json.dumps(
            {
                "files": sorted(os.listdir(export)),
                "load_s": round(load_s, 1),
                "tensors": len(after),
                "tensors_changed_by_training": changed,
                "params_b": round(sum(t.numel() for t in after.values()) / 1e9, 3),
            }
        )
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, tiny model, small sizes: checks the script's logic without a GPU",
    )
    p.add_argument("--workdir", help="keep everything here (default: a temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temp workdir")
    p.add_argument("--phases", help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--budget-s", type=float, default=480.0, help="time budget the summary checks")
    p.add_argument(
        "--disk-reserve-gb",
        type=float,
        default=None,
        help="disk left free for the OS and logs before a phase starts (default 5 GB; "
        "0 with --smoke)",
    )
    p.add_argument("--_build", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--_check-export", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._build:
        work, shape, train_rows, score_rows = args._build
        build(Path(work), json.loads(shape), int(train_rows), int(score_rows), args.smoke)
        return 0
    if args._check_export:
        check_export(*args._check_export, args.smoke)
        return 0
    if not args.smoke and not _cuda_available():
        print(
            "gpu_rehearsal: no CUDA device here; run it on a GPU machine "
            "(or --smoke for the same phases on CPU)",
            file=sys.stderr,
        )
        return 2
    return Rehearsal(args).run()


if __name__ == "__main__":
    sys.exit(main())

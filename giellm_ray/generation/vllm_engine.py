"""The vLLM engine: one ``AsyncLLM`` (vLLM v1) on its own event-loop thread, speaking our requests.

``VLLMEngine(model_cfg, VLLMConfig(...))`` starts vLLM's engine core (its own process, which holds
the model) and an event loop in a daemon thread that owns the ``AsyncLLM``. Every row is one
``AsyncLLM.generate`` stream, so rows submitted by any caller, any thread, join the running batch
at once (continuous batching across calls):

- ``generate(requests)`` (blocking, any thread: Ray Data's threaded actor calls, benchmarks);
- ``await generate_async(requests)`` on the engine's loop, and ``await run_async(coro)`` to run a
  coroutine there from another loop (a Serve replica); cancelling the caller cancels the streams,
  and ``AsyncLLM.generate`` aborts them (their KV blocks are freed at the next step).

The format constraint is vLLM's own structured outputs: a constrained row
(:class:`~giellm_ray.generation.base.ConstraintSpec`) becomes
``SamplingParams(structured_outputs=StructuredOutputsParams(grammar=row_lark(task, text)))`` on
the ``guidance`` backend (llguidance; :mod:`giellm_ray.decoding.lark_grammar`). vLLM compiles each
row's grammar in a thread pool, overlaps its masks with the forward pass and applies them under
either model runner, async scheduling and speculative decoding; nothing of ours runs in the engine
core. Failure containment comes with it: vLLM validates a row's grammar in this process
(``VLLMValidationError``: that request alone), a grammar that fails to compile in the engine core
or a matcher that rejects a sampled token finishes that request with ``finish_reason="error"``
(scheduler's ``FINISHED_ERROR``), and a matcher in an error state masks to EOS; each becomes that
row's ``error`` here, and the engine and the other rows go on.

Results follow ``giellm_ray.generation.base``: ``text`` decoded without special tokens,
``num_generated_tokens`` with the final EOS, ``finished`` for an EOS stop (a row that reaches
``max_tokens`` is not finished: llguidance has no token budget, so such a row is cut; the
extractor keeps its complete items and flags it, ``finish_row``), ``error`` for a row vLLM
refused or failed, or a dead engine. With ``GenerationRequest.scores`` the sampled tokens'
log-probabilities come back too (``logprobs=0``: the sampled token's only). They are computed
under the constraint: in vLLM 0.32's runners (``v1/worker/gpu_model_runner.py``
``sample_tokens`` and the V2 ``v1/worker/gpu/model_runner.py``) ``apply_grammar_bitmask`` sets
the disallowed logits to -inf in place *before* ``self.sampler(logits, ...)``, and the sampler's
default ``logprobs_mode="raw_logprobs"`` takes ``log_softmax`` of those logits (``v1/sample/
sampler.py``), i.e. the distribution renormalised over the tokens the grammar allows, as the HF
engine's masked logits give. A dead engine (``EngineDeadError``: every later call fails) sets
``dead``; ``check_health`` raises so the owner can be replaced. Prompts arrive tokenized
(``GenerationRequest.prompt_ids``, from the extractor's length check), so vLLM does not tokenize
again and both engines see the same ids.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from giellm_ray.generation.adapters import vllm_lora_setup
from giellm_ray.generation.base import (
    ConstraintSpec,
    EngineStats,
    GenerationRequest,
    GenerationResult,
)
from giellm_ray.generation.config import VLLMConfig
from giellm_ray.model.loader import ModelConfig, load_tokenizer, localize

log = logging.getLogger(__name__)
T = TypeVar("T")
STRUCTURED_FAILED = (
    "engine error: the structured-output grammar failed for this row "
    "(vLLM finished it with finish_reason=error; see the engine log)"
)


def lead_space(tokenizer) -> bool:
    """Whether the tokenizer's decoder drops the first token's leading space (SentencePiece)."""
    from giellm_ray.decoding.vocab import drops_leading_space, token_bytes

    return drops_leading_space(tokenizer, token_bytes(tokenizer))


class VLLMEngine:
    """vLLM's ``AsyncLLM`` behind our request/result types; never raises for a row."""

    continuous = True

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: VLLMConfig | None = None,
        on_gpu: bool | None = None,
        constrained: bool = True,
        tokenizer=None,
        log_stats: bool = False,
        adapters: Mapping[str, str] | None = None,
    ) -> None:
        # vLLM logs to stdout by default; stdout is for command results (``giellm score`` prints
        # its summary there, and Ray forwards actors' stdout to the driver's). Set before vLLM's
        # first import, which configures its logger; its engine-core process inherits it.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        cfg = cfg or VLLMConfig()
        if on_gpu is None:
            import torch

            on_gpu = torch.cuda.is_available()
        if not on_gpu and (os.cpu_count() or 1) <= 4:
            # vLLM's CPU build keeps a core for its scheduler process, which mostly waits for
            # the model step (no async scheduling on CPU): on 2 cores that idled half the machine
            # (benchmarks/engines.py, 28M model, fp32, constrained: 409 -> 672 tok/s with both).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        self._cores_lock = None
        if not on_gpu and cfg.cpu_cores:
            self._bind_cores(cfg.cpu_cores)
        from vllm.config import StructuredOutputsConfig

        path = localize(model_cfg.name_or_path)
        kw = cfg.engine_kwargs(model_cfg.dtype, on_gpu)
        # LoRA: ``adapters`` {name: dir or s3://}; each row's LoRARequest (``generation.adapters``).
        self.adapter_names, self._loras, lora_kw = vllm_lora_setup(adapters, cfg, on_gpu)
        kw.update(lora_kw)
        kw.update(
            model=path,
            tokenizer=path,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
            disable_log_stats=not log_stats,
            structured_outputs_config=StructuredOutputsConfig(backend="guidance"),
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="giellm-vllm-loop"
        )
        self._thread.start()
        started = time.perf_counter()
        try:
            self.engine = self.call(self._start(kw))
        except BaseException:
            self.shutdown()
            raise
        self.startup_s = time.perf_counter() - started
        self.constrained = constrained
        self.max_positions = int(self.engine.model_config.max_model_len)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_cfg)
        self.eos_id = self.tokenizer.eos_token_id
        self.lead_space = lead_space(self.tokenizer) if constrained else False
        self.dead: str | None = None
        self.stats = EngineStats()
        self.in_flight = 0  # rows submitted and not yet finished (read by Serve for metrics)
        self._ids = itertools.count()
        log.info(
            "vLLM engine up in %.1f s (%s, max_model_len %d, constraint: %s)",
            self.startup_s,
            ", ".join(
                f"{k}={kw[k]}"
                for k in ("dtype", "max_num_seqs", "max_num_batched_tokens", "enforce_eager")
            ),
            self.max_positions,
            "guidance grammars" if constrained else "off",
        )

    def _bind_cores(self, count: int) -> None:
        """Bind this engine's OpenMP threads to a block of cores no other engine here holds
        (set before vLLM starts its engine-core process, which reads the variable)."""
        from giellm_ray.generation.cpu_cores import bind_string, claim_cores

        claimed = claim_cores(count)
        if claimed is None:
            log.warning(
                "no free block of %d cores on this node; vLLM binds its default cores", count
            )
            return
        cores, self._cores_lock = claimed
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind_string(cores)
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        log.info("vLLM CPU engine bound to cores %s", bind_string(cores))

    @staticmethod
    async def _start(kw: dict):
        """Build the AsyncLLM inside the engine's running loop (it binds its tasks to it)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kw))

    # -- running coroutines on the engine's loop -------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine's loop and wait for it (from any other thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("VLLMEngine.call from the engine's own loop; await it instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the engine's loop from any loop; cancelling this cancels it."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def reset_stats(self) -> None:
        self.stats = EngineStats()

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Complete every request (greedy), in order; blocks the calling thread."""
        return self.call(self.generate_async(requests))

    async def generate_async(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Complete every request concurrently on the engine's loop; results in order."""
        if asyncio.get_running_loop() is not self.loop:
            return await self.run_async(self.generate_async(requests))
        results = await asyncio.gather(*(self._one(r) for r in requests))
        st = self.stats
        for req, res in zip(requests, results, strict=True):
            st.rows += 1
            st.generated_tokens += res.num_generated_tokens
            st.errors += res.error is not None
            st.prompt_tokens += len(req.prompt_ids or ())
        return list(results)

    # -- one row -----------------------------------------------------------------------------------

    def grammar(self, spec: ConstraintSpec) -> str:
        """The row's llguidance grammar (this engine's tokenizer decides the lead space)."""
        from giellm_ray.decoding.lark_grammar import row_lark

        return row_lark(spec.task, spec.text, self.lead_space)

    def request_args(self, req: GenerationRequest) -> dict:
        """``AsyncLLM.generate`` keywords for one row (prompt, sampling parameters, id): every
        per-row vLLM option is set here."""
        from vllm import SamplingParams
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if req.constraint is not None and self.constrained:
            if not isinstance(req.constraint, ConstraintSpec):
                raise TypeError(
                    f"the vLLM engine takes a ConstraintSpec, not a {type(req.constraint).__name__}"
                )
            structured = StructuredOutputsParams(grammar=self.grammar(req.constraint))
        ids = req.prompt_ids or self.tokenizer(req.prompt)["input_ids"]
        params = SamplingParams(
            max_tokens=req.max_new_tokens,
            temperature=0.0,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
            structured_outputs=structured,
            logprobs=0 if req.scores else None,
        )
        return {
            # An engine input, as vLLM's own servers build one for token ids: a raw prompt dict
            # goes through its deprecated re-rendering path (a warning per process in 0.32).
            "prompt": tokens_input(list(ids)),
            "sampling_params": params,
            "request_id": f"g{next(self._ids)}",
        }

    async def _one(self, req: GenerationRequest) -> GenerationResult:
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.dead:
            return GenerationResult("", 0, False, f"engine error: {self.dead}")
        if req.max_new_tokens < 1:
            return GenerationResult("", 0, False)
        try:
            args = self.request_args(req)
            lora = self._loras[req.adapter]  # KeyError: an adapter this engine does not hold
        except Exception as exc:
            return GenerationResult(
                "", 0, False, f"engine error: bad request: {type(exc).__name__}: {exc}"
            )
        final = None
        self.in_flight += 1
        try:
            async for out in self.engine.generate(**args, lora_request=lora):
                final = out
        except EngineDeadError as exc:
            self.dead = f"{type(exc).__name__}: {exc}"
            log.error("vLLM engine is dead: %s", self.dead)
            return GenerationResult("", 0, False, f"engine error: {self.dead}")
        except Exception as exc:  # VLLMValidationError (a grammar llguidance rejects): this row
            return GenerationResult(
                "", 0, False, f"engine error: vLLM refused the row: {type(exc).__name__}: {exc}"
            )
        finally:
            self.in_flight -= 1
        if final is None:
            return GenerationResult("", 0, False, "engine error: vLLM returned no output")
        return self._result(final, req.scores)

    def _result(self, out, scores: bool = False) -> GenerationResult:
        comp = out.outputs[0]
        toks = list(comp.token_ids)
        if comp.finish_reason == "abort":
            return GenerationResult("", len(toks), False, "engine error: the row was aborted")
        if comp.finish_reason == "error":
            return GenerationResult("", len(toks), False, STRUCTURED_FAILED)
        text = self.tokenizer.decode(
            [t for t in toks if t != self.eos_id], skip_special_tokens=True
        )
        res = GenerationResult(text, len(toks), comp.finish_reason == "stop")
        if scores and comp.logprobs is not None:
            kept = [(t, lp) for t, lp in zip(toks, comp.logprobs, strict=False) if t != self.eos_id]
            res.token_ids = [t for t, _ in kept]
            res.token_logprobs = [float(lp[t].logprob) for t, lp in kept]
        return res

    def iteration_count(self) -> int | None:
        """Engine steps so far (``log_stats=True`` only): the count of vLLM's per-step
        ``vllm:iteration_tokens_total`` histogram; benchmarks derive the mean batch from it."""
        from vllm.v1.metrics.reader import get_metrics_snapshot

        for metric in get_metrics_snapshot():
            if metric.name == "vllm:iteration_tokens_total":
                return int(metric.count)
        return None

    # -- health and shutdown -----------------------------------------------------------------------

    def kill_processes(self) -> None:
        """SIGKILL the engine's processes (engine core, workers): before this process exits
        without a shutdown, so none of them keeps the device (they do not watch their parent)."""
        import psutil

        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.name().startswith("VLLM::"):
                    proc.kill()
            except psutil.Error:
                pass

    def check_health(self) -> None:
        """Raise if the engine cannot generate any more."""
        if self.dead or self.engine is None or self.engine.errored:
            raise RuntimeError(f"vLLM engine is dead: {self.dead or 'engine core not running'}")

    def shutdown(self) -> None:
        """Stop the engine core process and the loop thread (idempotent)."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            self.engine = None
            try:
                self.call(self._stop(engine))
            except Exception:
                log.exception("vLLM engine shutdown failed")
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        from giellm_ray.generation.cpu_cores import release_cores

        release_cores(getattr(self, "_cores_lock", None))

    @staticmethod
    async def _stop(engine) -> None:
        engine.shutdown()

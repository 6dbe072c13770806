"""LoRA adapters on the HF engine (tiny model, two random PEFT adapters): a batch mixing adapters
gives every row what its adapter alone gives it, under the format constraint; unknown names are
that row's error; adapter sources are checked and ``s3://`` ones cached once per node."""

from __future__ import annotations

import os

import pytest

from giellm_ray import schema as S
from giellm_ray.generation.adapters import (
    adapter_problem,
    check_adapter_map,
    localize_adapters,
)
from giellm_ray.generation.build import build_extractor
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.model.loader import ModelConfig

GEN = GenerationConfig(max_new_tokens=24, batch_size=8)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    from giellm_ray.model.tiny_lora import build_tiny_adapter

    root = tmp_path_factory.mktemp("adapters")
    return {
        name: build_tiny_adapter(tiny_model_dir, str(root / name), seed=seed)
        for name, seed in (("a", 1), ("b", 2))
    }


def _rows(records, cycle, n=12):
    return [
        {S.DATASET: "SCNM", S.TEXT: r["text"], S.ADAPTER: cycle[i % len(cycle)]}
        for i, r in enumerate(records[:n])
    ]


def _key(o):
    return o[S.PREDICTION], o[S.NUM_GENERATED_TOKENS], o[S.ERROR]


def test_mixed_adapters_give_each_row_what_its_adapter_alone_gives(
    tiny_model_dir, adapters, stockmark_records
):
    model = ModelConfig(name_or_path=tiny_model_dir)
    both = build_extractor("hf", model, GEN, adapters=adapters)
    assert both.adapters == ("a", "b")
    rows = _rows(stockmark_records, ["a", "b", None], n=9)
    mixed = both.extract(rows)

    # Each adapter alone: a model holding only that adapter (the base: no PEFT at all).
    alone = {None: build_extractor("hf", model, GEN)}
    for name, path in adapters.items():
        alone[name] = build_extractor("hf", model, GEN, adapters={name: path})
    for name, ex in alone.items():
        idx = [i for i, r in enumerate(rows) if r[S.ADAPTER] == name]
        want = ex.extract([rows[i] for i in idx])
        assert [_key(mixed[i]) for i in idx] == [_key(o) for o in want], name
    for got in mixed:  # the format constraint applies unchanged: outputs parse, or the budget cut
        assert got[S.ERROR] is None or got[S.ERROR].startswith("output truncated"), got[S.ERROR]

    # The adapters are not the identity: each changes some row's output from the base model's.
    base = alone[None].extract([{**r, S.ADAPTER: None} for r in rows])
    for name in adapters:
        on = [o for r, o in zip(rows, mixed, strict=True) if r[S.ADAPTER] == name]
        off = [o for r, o in zip(rows, base, strict=True) if r[S.ADAPTER] == name]
        assert [_key(o) for o in on] != [_key(o) for o in off], name


def test_an_unknown_adapter_is_that_rows_error(tiny_model_dir, adapters, stockmark_records):
    ex = build_extractor("hf", ModelConfig(name_or_path=tiny_model_dir), GEN, adapters=adapters)
    rows = _rows(stockmark_records, ["a", "nope", None, ""], n=4)
    out = ex.extract(rows)
    assert out[1][S.ERROR] == "unknown adapter 'nope'; known adapters: a, b"
    assert out[3][S.ERROR].startswith("unknown adapter ''")
    assert out[1][S.PREDICTION] is None and out[1][S.NUM_GENERATED_TOKENS] == 0
    for o in (out[0], out[2]):
        assert isinstance(o[S.PREDICTION], str) and o[S.NUM_GENERATED_TOKENS] > 0
    # Without adapters in the config any name is unknown; null still means the base model.
    plain = build_extractor("hf", ModelConfig(name_or_path=tiny_model_dir), GEN)
    out = plain.extract(rows[:3])
    assert out[0][S.ERROR] == (
        "unknown adapter 'a'; known adapters: none (the config names no adapters)"
    )
    assert out[2][S.ERROR] is None or out[2][S.ERROR].startswith("output truncated")


def test_adapter_names_and_sources_are_checked(tmp_path, adapters):
    assert check_adapter_map({"ner-v1.2": "/x"}) == {"ner-v1.2": "/x"}
    for bad in ("", " a", "a b", "_hidden", "x" * 129):
        with pytest.raises(ValueError, match="adapter name"):
            check_adapter_map({bad: "/x"})
    with pytest.raises(ValueError, match="source"):
        check_adapter_map({"a": " "})
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter directory"):
        localize_adapters({"a": str(tmp_path)})
    assert adapter_problem(None, ()) is None and adapter_problem("a", ("a",)) is None
    assert adapter_problem(5, ("a",)) == "unknown adapter 5; known adapters: a"
    assert localize_adapters(adapters) == adapters


def test_s3_adapters_download_once_per_node(s3_server, adapters, tmp_path, monkeypatch):
    import boto3

    monkeypatch.setenv("GIELLM_MODEL_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    for name in os.listdir(adapters["a"]):
        s3.upload_file(os.path.join(adapters["a"], name), "giellm-test", f"adapters/a/{name}")
    first = localize_adapters({"a": "s3://giellm-test/adapters/a"})["a"]
    assert first.startswith(str(tmp_path / "cache"))
    with (
        open(os.path.join(first, "adapter_model.safetensors"), "rb") as f,
        open(os.path.join(adapters["a"], "adapter_model.safetensors"), "rb") as g,
    ):
        assert f.read() == g.read()
    mtime = os.stat(first).st_mtime_ns
    # A second caller (another actor on the node) reuses the finished copy: nothing is written.
    assert localize_adapters({"a": "s3://giellm-test/adapters/a/"})["a"] == first
    assert os.stat(first).st_mtime_ns == mtime


def test_serving_picks_the_requests_adapter_and_refuses_unknown_ones(
    tiny_model_dir, adapters, stockmark_records
):
    """The HTTP app over a real Extractor holding both adapters (no Ray): ``adapter`` reaches the
    engine, an unknown one is a 422 before the model is reached, ``GET /v1/adapters`` lists."""
    from fastapi.testclient import TestClient

    from giellm_ray.formats import DEFAULT_REGISTRY
    from giellm_ray.serve.config import HTTPConfig
    from giellm_ray.serve.http import build_http_app

    ex = build_extractor("hf", ModelConfig(name_or_path=tiny_model_dir), GEN, adapters=adapters)
    calls: list[list[dict]] = []

    async def extract(rows):
        calls.append(rows)
        return await ex.extract_async(rows)

    app = build_http_app(DEFAULT_REGISTRY, HTTPConfig(), "tiny", extract, adapters=ex.adapters)
    text = stockmark_records[0]["text"]
    with TestClient(app) as client:
        assert client.get("/v1/adapters").json() == {"model": "tiny", "adapters": ["a", "b"]}
        answers = {}
        for name in ("a", "b", None):
            body = {"text": text, "dataset": "SCNM", **({"adapter": name} if name else {})}
            r = client.post("/v1/extract", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["adapter"] == name
            (want,) = ex.extract([{S.TEXT: text, S.DATASET: "SCNM", S.ADAPTER: name}])
            assert r.json()["raw_output"] == want[S.PREDICTION]
            answers[name] = r.json()["raw_output"]
        assert len(calls) == 3
        r = client.post("/v1/extract", json={"text": text, "dataset": "SCNM", "adapter": "zz"})
        assert r.status_code == 422
        assert r.json()["detail"] == "unknown adapter 'zz'; known adapters: a, b"
        r = client.post(
            "/v1/extract/batch",
            json={
                "requests": [
                    {"text": text, "dataset": "SCNM", "adapter": "b"},
                    {"text": text, "dataset": "SCNM", "adapter": "c"},
                ]
            },
        )
        assert r.status_code == 422
        assert r.json()["detail"].startswith("requests[1]: unknown adapter")
        assert (
            client.post(
                "/v1/extract", json={"text": text, "dataset": "SCNM", "adapter": 3}
            ).status_code
            == 422
        )
        assert len(calls) == 3  # refused before the model
        r = client.post(
            "/v1/extract/batch",
            json={
                "requests": [
                    {"text": text, "dataset": "SCNM", "adapter": "b"},
                    {"text": text, "dataset": "SCNM"},
                ]
            },
        )
        assert [x["raw_output"] for x in r.json()["results"]] == [answers["b"], answers[None]]


def test_configs_take_adapters_and_the_input_column_must_be_strings(tmp_path, tiny_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from giellm_ray.generation.config import VLLMConfig
    from giellm_ray.score.config import ScoreConfig
    from giellm_ray.score.driver import run_score
    from giellm_ray.serve.config import ServeConfig

    assert ServeConfig(adapters={"a": "s3://b/a"}).adapters == {"a": "s3://b/a"}
    with pytest.raises(ValueError, match="adapter name"):
        ScoreConfig(adapters={"a b": "/x"})
    assert VLLMConfig().lora_kwargs(0, 0) == {}
    assert VLLMConfig(max_loras=4).lora_kwargs(2, 8) == {
        "enable_lora": True,
        "max_loras": 2,
        "max_lora_rank": 16,
    }
    with pytest.raises(ValueError, match="above vllm.max_lora_rank 16"):
        VLLMConfig().lora_kwargs(1, 32)
    with pytest.raises(ValueError, match="enable_lora is false"):
        VLLMConfig(enable_lora=False).lora_kwargs(1, 8)

    pq.write_table(
        pa.table({"dataset": ["SCNM"], "text": ["x"], "adapter": [3]}), tmp_path / "in.parquet"
    )
    cfg = ScoreConfig(input=[str(tmp_path / "in.parquet")], output=str(tmp_path / "out"))
    cfg.model.name_or_path = tiny_model_dir
    with pytest.raises(ValueError, match="column 'adapter' must be string"):
        run_score(cfg)
    assert not (tmp_path / "out").exists()

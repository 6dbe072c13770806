"""Row isolation in the Extractor the service runs, on the real tiny model: hostile rows mixed into
one batch with good rows fail alone (each with its own error), and every good row gets exactly the
answer it gets when extracted alone. Covers the rows the HTTP layer refuses (so a caller that
reaches the model another way, e.g. a DeploymentHandle or bulk scoring, cannot break a batch
either) and rows that break a step inside the Extractor (tokenizer, prompt, dataset lookup)."""

from __future__ import annotations

import pytest

from giellm_ray import schema as S
from giellm_ray.generation.base import PUBLIC_ROW_ERRORS
from giellm_ray.generation.build import hf_extractor
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.generation.extractor import UNTOKENIZABLE

HOSTILE = [
    ({S.TEXT: "\ud800", S.DATASET: "SCNM"}, UNTOKENIZABLE),  # the tokenizer raises on it
    ({S.TEXT: "株式会社\udfff東京", S.DATASET: "SCPOS:RW"}, UNTOKENIZABLE),
    ({S.TEXT: "ok", S.DATASET: "SCNM", S.PROMPT: "<\ud83d>"}, UNTOKENIZABLE),
    ({S.TEXT: 5, S.DATASET: "SCNM"}, "text is empty"),
    ({S.TEXT: "ok", S.DATASET: ["SCNM"]}, "internal error while preparing"),  # unhashable
    ({S.TEXT: "ok", S.DATASET: None}, "unknown dataset None"),
    ({S.TEXT: "ok", S.DATASET: "SCNM", S.MAX_NEW_TOKENS: "5"}, "max_new_tokens must"),
    ({S.TEXT: "長" * 5000, S.DATASET: "SCNM"}, "prompt too long"),
]


def assert_same_answer(got: dict, alone: dict) -> None:
    """The same answer, token for token; the confidence scores equal up to the float noise a
    differently padded batch adds to the logits (about 1e-7 relative)."""
    from conftest import scores_close, without_scores

    assert without_scores(got) == without_scores(alone), (got, alone)
    assert scores_close(got, alone, rel=1e-4), (got, alone)


@pytest.fixture(scope="module", params=[False, True], ids=["unconstrained", "constrained"])
def extractor(request, tiny_model_dir):
    from giellm_ray.model.loader import ModelConfig

    return hf_extractor(
        ModelConfig(name_or_path=tiny_model_dir),
        GenerationConfig(max_new_tokens=8),
        constrained=request.param,
    )


@pytest.fixture(scope="module")
def good_rows(stockmark_records):
    datasets = ["SCNM", "SCPOS:RW", "TCREE", "SCNM", "SCPOS:N"]
    return [
        {S.TEXT: r["text"], S.DATASET: d}
        for r, d in zip(stockmark_records[:5], datasets, strict=True)
    ]


def test_hostile_rows_fail_alone_and_good_rows_are_untouched(extractor, good_rows):
    alone = [extractor.extract([row])[0] for row in good_rows]
    mixed: list[tuple[str, int]] = []  # (kind, index) in batch order: hostile rows interleaved
    for k in range(max(len(good_rows), len(HOSTILE))):
        if k < len(HOSTILE):
            mixed.append(("bad", k))
        if k < len(good_rows):
            mixed.append(("good", k))
    rows = [HOSTILE[k][0] if kind == "bad" else good_rows[k] for kind, k in mixed]
    out = extractor.extract(rows)
    assert len(out) == len(rows)
    for (kind, k), o in zip(mixed, out, strict=True):
        if kind == "good":
            assert_same_answer(o, alone[k])
        else:
            assert o[S.ERROR].startswith(HOSTILE[k][1]), (HOSTILE[k][0], o[S.ERROR])
            assert o[S.PREDICTION] is None and o[S.NUM_GENERATED_TOKENS] == 0


def test_errors_about_the_input_are_public_and_the_rest_internal(extractor):
    out = extractor.extract([row for row, _ in HOSTILE])
    for (row, _), o in zip(HOSTILE, out, strict=True):
        internal = o[S.ERROR].startswith("internal error")
        # A service shows the caller exactly the errors about the caller's own input.
        assert o[S.ERROR].startswith(PUBLIC_ROW_ERRORS) != internal, (row, o[S.ERROR])

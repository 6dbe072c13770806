"""The shipped sample corpus: loads in the dataset schema, renders, parses, test unseen in train."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from giellm_ray.formats import DEFAULT_REGISTRY, normalize_items, parse, render
from giellm_ray.sample import SIZES, generate, sample_path
from giellm_ray.schema import DATASET_SCHEMA


@pytest.fixture(scope="module")
def shipped():
    return {s: pq.read_table(sample_path(s)) for s in ("train", "test")}


def test_shipped_files_in_dataset_schema_and_small(shipped):
    import os

    for split, table in shipped.items():
        assert table.schema.equals(DATASET_SCHEMA), split
        assert os.path.getsize(sample_path(split)) < 1_000_000
    counts = {s: Counter(t.column("dataset").to_pylist()) for s, t in shipped.items()}
    assert counts["train"] == {d: n for d, (n, _) in SIZES.items()}
    assert counts["test"] == {d: n for d, (_, n) in SIZES.items()}


def test_rows_render_and_parse_back(shipped):
    for split, table in shipped.items():
        for row in table.to_pylist():
            assert row["split"] == split and row["error"] is None
            assert render(row) == (row["prompt"], row["target"])
            task = DEFAULT_REGISTRY[row["dataset"]]
            got = parse(row["target"], task)
            assert got.ok, (row["target"], got.error)
            assert got.tl_label == row["tl_label"]
            assert got.items == normalize_items(row["items"], task)
            for it in row["items"]:
                assert it["span"] in row["text"]


def test_test_texts_never_in_train(shipped):
    train = set(shipped["train"].column("text").to_pylist())
    test = shipped["test"].column("text").to_pylist()
    assert len(set(test)) == len(test)
    assert not train & set(test)
    ids = shipped["train"].column("id").to_pylist() + shipped["test"].column("id").to_pylist()
    assert len(set(ids)) == len(ids)


def test_labels_balanced_enough_to_learn(shipped):
    rows = shipped["train"].to_pylist()
    scnm_tl = Counter(r["tl_label"] for r in rows if r["dataset"] == "SCNM")
    assert set(scnm_tl) == set(DEFAULT_REGISTRY["SCNM"].tl_labels)
    assert min(scnm_tl.values()) > 50
    pos_tl = Counter(r["tl_label"] for r in rows if r["dataset"].startswith("SCPOS"))
    assert set(pos_tl) == {"積極", "消極"} and min(pos_tl.values()) > 300
    assert any(r["target"].endswith(":無い;") for r in rows)


def test_generator_is_seeded_and_matches_shipped_files(shipped):
    again = generate()
    for split, table in shipped.items():
        assert again[split] == table.to_pylist()
    assert generate(seed=1)["train"] != again["train"]


def test_sample_path_rejects_unknown_split():
    with pytest.raises(ValueError, match="unknown sample split"):
        sample_path("dev")

"""Property-based: the parser never raises, whatever it is fed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from giellm_ray.formats import DEFAULT_REGISTRY, learn_task, make_item, parse, render

TASKS = list(DEFAULT_REGISTRY.values()) + [
    learn_task(
        DEFAULT_REGISTRY["TCREE"], [], [[make_item("所属", "a", "b"), make_item("受賞", "c")]]
    )
]
ALPHABET = st.sampled_from(list(":;<>社会人名固有表現抽出積極消極ポジティブ所属ab 、。\n\x00"))
pieces = st.one_of(st.text(), st.text(alphabet=ALPHABET, max_size=60))


@settings(max_examples=400, deadline=None)
@given(output=pieces, task_index=st.integers(0, len(TASKS) - 1))
def test_parse_never_raises(output, task_index):
    got = parse(output, TASKS[task_index])
    assert got.ok or isinstance(got.error, str)
    for it in got.items:
        assert set(it) == {"label", "span", "tail"}


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["<社会>固有表現抽出", "<技術>固有表現抽出:人名;"]), tail=st.text())
def test_parse_with_valid_head_never_raises(prefix, tail):
    parse(prefix + tail, DEFAULT_REGISTRY["SCNM"])


span_text = st.text(min_size=1, max_size=12).filter(lambda s: ":" not in s)


@settings(max_examples=300, deadline=None)
@given(
    spans=st.lists(
        st.tuples(st.sampled_from(DEFAULT_REGISTRY["SCNM"].wl_labels), span_text), max_size=5
    )
)
def test_round_trip_for_spans_without_colons(spans):
    rec = {
        "dataset": "SCNM",
        "text": "本文",
        "tl_label": "学問",
        "items": [make_item(label, span) for label, span in spans],
    }
    got = parse(render(rec)[1], DEFAULT_REGISTRY["SCNM"])
    assert got.ok and got.items == rec["items"]

"""``parse_cut``: an output the token budget cut keeps the items it wrote in full, never the last
(possibly shortened) one, for label items, relation items, spans holding ``:`` and the none
marker."""

from __future__ import annotations

from giellm_ray.formats import DEFAULT_REGISTRY, TaskSpec, parse_cut

SCNM = DEFAULT_REGISTRY["SCNM"]
REL = TaskSpec("REL", ("社会",), ("人名", "地名"), "関係抽出", relation_labels=("社長",))


def spans(out, task):
    p = parse_cut(out, task)
    assert p.ok, p.error
    return [(i["label"], i["span"], i["tail"]) for i in p.items]


def test_the_last_item_is_dropped_wherever_the_cut_falls():
    full = "<社会>固有表現抽出:地名;J:COM春日部:人名;豊田章男"
    assert spans(full, SCNM) == [("地名", "J:COM春日部", None)]  # 豊田章男 may have been cut
    assert spans(full[:-2], SCNM) == [("地名", "J:COM春日部", None)]
    assert spans("<社会>固有表現抽出:地名;J:CO", SCNM) == []
    assert spans("<社会>固有表現抽出:地", SCNM) == []
    assert spans("<社会>固有表現抽出:無い;", SCNM) == []
    assert spans("<社会>固有表現抽出:無", SCNM) == []
    assert spans("<社会>関係抽出:トヨタ;社長;豊田:人名;豊", REL) == [("社長", "トヨタ", "豊田")]
    assert spans("<社会>関係抽出:トヨタ;社", REL) == []


def test_a_cut_inside_the_prefix_does_not_parse():
    assert not parse_cut("<社会>固有表", SCNM).ok
    assert not parse_cut("", SCNM).ok

"""The shipped sample corpus: synthetic, templated Japanese sentences a tiny model can learn.

``giellm demo`` and the CPU configs train on this instead of downloaded data. It is written by
this project (not the paper's data): regular sentences from a few templates per TL class over
bounded word lists, so a 1.2M-parameter model (the demo's) trained from scratch on CPU for minutes
visibly learns both the TL decision and the WL items (on real Wikipedia text it only learns the format).

- SCNM: ``{人名}は{地名}にある{法人名}に勤めている。`` style sentences; the TL topic (社会 文芸 学問
  技術 自然) follows the template family; every entity string belongs to one type; some
  自然 sentences have no entity (``:無い;``).
- SCPOS (RW, N, Adj, N&Adj): short product reviews; every word has a fixed polarity; TL is
  積極 when polar words are mostly positive, else 消極 (the number of polar words is odd, no ties).
  N items: nouns; Adj: adjectives; N&Adj: both; RW (relation words): the polar words only.

Rows follow ``giellm_ray.schema.DATASET_SCHEMA`` and are rendered with ``giellm_ray.formats``.
Test rows are texts that never occur in train (unseen combinations of known words).
Regenerate the shipped files (seeded, byte-for-byte reproducible)::

    python -m giellm_ray.sample --output giellm_ray/resources/sample
"""

from __future__ import annotations

import argparse
import random
import re
from importlib import resources
from pathlib import Path

from giellm_ray.errors import UserError
from giellm_ray.formats import render

SEED = 20231112
SIZES = {  # dataset -> (train rows, test rows)
    "SCNM": (450, 70),
    "SCPOS:RW": (300, 40),
    "SCPOS:N": (200, 30),
    "SCPOS:Adj": (200, 30),
    "SCPOS:N&Adj": (200, 30),
}

ENTITIES = {
    "人名": "山田太郎 佐藤花子 鈴木一郎 田中美咲 高橋健 伊藤由美 渡辺翔 中村愛 小林誠 加藤陽子",
    "地名": "東京都 大阪府 札幌市 福岡市 京都市 名古屋市 仙台市 広島市 横浜市 那覇市",
    "法人名": "トヨタ自動車 ソニー 任天堂 パナソニック 日立製作所 富士通 楽天 キヤノン",
    "政治的組織名": "自由民主党 立憲民主党 日本維新の会 公明党 国民民主党 日本共産党",
    "その他の組織名": "東京大学 京都大学 大阪大学 早稲田大学 劇団四季 北海道大学",
    "施設名": "国立図書館 市民ホール 中央博物館 県立美術館 科学館 植物園",
    "製品名": "ウォークマン プレイステーション カローラ レッツノート アクオス ファミコン",
    "イベント名": "東京国際映画祭 国際言語学会議 全国俳句大会 科学技術フェア 春の文学祭",
}
# Fillers that are not entities (自然 sentences without items).
SEASONS = ["春", "夏", "秋", "冬"]
ANIMALS = ["鹿", "熊", "狐", "白鳥", "蛍", "猿"]

SCNM_TEMPLATES = {
    "社会": [
        "{人名}は{地名}にある{法人名}に勤めている。",
        "{政治的組織名}は{地名}で記者会見を開いた。",
        "{人名}は{政治的組織名}の代表に選ばれた。",
    ],
    "文芸": [
        "{人名}の小説は{地名}の{施設名}で朗読された。",
        "{人名}は{イベント名}で新しい詩集を発表した。",
        "{その他の組織名}は{人名}の戯曲を上演した。",
    ],
    "学問": [
        "{人名}は{施設名}で言語学を研究している。",
        "{その他の組織名}は{地名}で{イベント名}を主催した。",
        "{人名}は{その他の組織名}の教授である。",
    ],
    "技術": [
        "{法人名}は新しい{製品名}を発表した。",
        "{製品名}は{法人名}が{地名}で開発した。",
        "{人名}は{法人名}で{製品名}の設計を担当した。",
    ],
    "自然": [
        "{地名}の山では秋になると紅葉が美しい。",
        "{地名}の{施設名}では珍しい花が咲いている。",
        "{季節}になると{動物}が山に現れる。",
        "{季節}の川には{動物}がよく集まる。",
    ],
}

PRODUCTS = ["掃除機", "イヤホン", "炊飯器", "財布", "椅子", "時計", "カメラ", "鞄", "靴", "傘"]
ASPECTS = ["値段", "音", "色", "画面", "電池", "デザイン", "サイズ", "説明書"]
FEELINGS = {
    "ポジティブ": ["満足", "感動", "安心", "感謝"],
    "ネガティブ": ["後悔", "心配", "落胆", "困惑"],
}
ADJECTIVES = {
    "ポジティブ": ["良い", "安い", "軽い", "美しい", "明るい", "優しい", "使いやすい", "嬉しい"],
    "ネガティブ": ["悪い", "高い", "重い", "汚い", "暗い", "遅い", "うるさい", "使いにくい"],
}
# {P}: product, {A}: aspect noun, {J1},{J2}: adjectives, {F}: feeling noun. "maj"/"opp" mark
# which side each polar word takes (majority polarity decides the TL label).
SCPOS_TEMPLATES = [
    ("この{P}は{J1}。{A}も{J2}。", ("maj", "maj")),
    ("この{P}は{A}が{J1}ので{F}しました。", ("maj", "maj")),
    ("{P}の{A}は{J1}が、{J2}ので{F}しています。", ("opp", "maj", "maj")),
    ("{A}が{J1}{P}で、とても{F}しています。", ("maj", "maj")),
    ("この{P}は{J1}。", ("maj",)),
]
OTHER = {"ポジティブ": "ネガティブ", "ネガティブ": "ポジティブ"}


def _scnm_row(rng: random.Random) -> dict:
    tl = rng.choice(sorted(SCNM_TEMPLATES))
    template = rng.choice(SCNM_TEMPLATES[tl])
    items = []

    def fill(m: re.Match) -> str:
        slot = m.group(1)
        if slot == "季節":
            return rng.choice(SEASONS)
        if slot == "動物":
            return rng.choice(ANIMALS)
        span = rng.choice(ENTITIES[slot].split())
        items.append({"label": slot, "span": span, "tail": None})
        return span

    text = re.sub(r"\{(.+?)\}", fill, template)
    return {"dataset": "SCNM", "text": text, "tl_label": tl, "items": items}


def _scpos_row(rng: random.Random, dataset: str) -> dict:
    template, sides = rng.choice(SCPOS_TEMPLATES)
    major = rng.choice(sorted(ADJECTIVES))
    polar = iter(major if s == "maj" else OTHER[major] for s in sides)
    words: list[tuple[str, str, str]] = []  # (pos, polarity, word) in text order
    parts = {}
    for slot in re.findall(r"\{(.+?)\}", template):
        if slot == "P":
            parts[slot] = rng.choice(PRODUCTS)
            words.append(("名詞", "中立", parts[slot]))
        elif slot == "A":
            parts[slot] = rng.choice(ASPECTS)
            words.append(("名詞", "中立", parts[slot]))
        elif slot == "F":
            pol = next(polar)
            parts[slot] = rng.choice(FEELINGS[pol])
            words.append(("名詞", pol, parts[slot]))
        else:
            pol = next(polar)
            parts[slot] = rng.choice(ADJECTIVES[pol])
            words.append(("形容詞", pol, parts[slot]))
    text = template.format(**parts)
    keep = {
        "SCPOS:N": lambda pos, pol: pos == "名詞",
        "SCPOS:Adj": lambda pos, pol: pos == "形容詞",
        "SCPOS:N&Adj": lambda pos, pol: True,
        "SCPOS:RW": lambda pos, pol: pol != "中立",
    }[dataset]
    items = [{"label": pol, "span": w, "tail": None} for pos, pol, w in words if keep(pos, pol)]
    tl = "積極" if major == "ポジティブ" else "消極"
    return {"dataset": dataset, "text": text, "tl_label": tl, "items": items}


def generate(seed: int = SEED, sizes: dict[str, tuple[int, int]] | None = None) -> dict:
    """``{"train": rows, "test": rows}`` in the dataset schema; no test text occurs in train."""
    rng = random.Random(seed)
    sizes = sizes or SIZES
    out: dict[str, list[dict]] = {"train": [], "test": []}
    seen: set[str] = set()
    for split_index, split in enumerate(("train", "test")):
        for dataset, counts in sizes.items():
            want, made, tries = counts[split_index], 0, 0
            split_seen: set[str] = set()
            while made < want:
                tries += 1
                if tries > 200 * want + 1000:
                    raise RuntimeError(f"cannot draw {want} distinct {dataset} {split} rows")
                row = _scnm_row(rng) if dataset == "SCNM" else _scpos_row(rng, dataset)
                # Train texts may repeat across SCPOS tasks; a test text is new everywhere.
                if row["text"] in split_seen or (split == "test" and row["text"] in seen):
                    continue
                split_seen.add(row["text"])
                prompt, target = render(row)
                tag = dataset.lower().replace(":", "-").replace("&", "")
                made += 1
                out[split].append(
                    {
                        "id": f"sample-{tag}-{split}-{made:04d}",
                        "prompt": prompt,
                        "target": target,
                        "split": split,
                        "error": None,
                        **row,
                    }
                )
            seen |= split_seen
    rng.shuffle(out["train"])
    return out


def write(output_dir: str | Path, seed: int = SEED) -> dict[str, str]:
    """Write ``train.parquet`` and ``test.parquet`` to ``output_dir``; return their paths."""
    import pyarrow.parquet as pq

    from giellm_ray.schema import dataset_table

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in generate(seed).items():
        paths[split] = str(out / f"{split}.parquet")
        pq.write_table(dataset_table(rows), paths[split], compression="zstd")
    return paths


def sample_path(split: str = "train") -> str:
    """Path of the shipped ``train`` or ``test`` Parquet file inside the installed package."""
    if split not in ("train", "test"):
        raise UserError(f"unknown sample split {split!r}; use 'train' or 'test'")
    return str(resources.files("giellm_ray") / "resources" / "sample" / f"{split}.parquet")


SCHEME = "sample:"


def resolve_uri(path: str | None) -> str | None:
    """``sample:train`` / ``sample:test`` → the shipped file's path; any other path unchanged.

    Shipped configs (``tiny-cpu.yaml``) name the sample this way so they work from any working
    directory and from an installed wheel; config validators call this.
    """
    if isinstance(path, str) and path.startswith(SCHEME):
        return sample_path(path[len(SCHEME) :])
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="directory for train/test .parquet")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    args = parser.parse_args(argv)
    for split, path in write(args.output, args.seed).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

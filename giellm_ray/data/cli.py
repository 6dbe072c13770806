"""``giellm data scnm|scpos|authors|mix``: build GIELLM dataset Parquet from raw corpora.

    giellm data scnm --ner-json ner.json --tl-labels labels.csv --output scnm.parquet
    giellm data scpos --input reviews.csv --text-column review --label-column sentiment \\
        --output scpos/ [--datasets SCPOS:N SCPOS:Adj] [--limit 1000] [--adj-pos 形容詞 形状詞]
    giellm data authors --input SCNM.csv --output authors/scnm.parquet [--dataset SCNM]
    giellm data mix --input scnm.parquet scpos/ --output mix/ [--seed 0] [--sizes SCNM=1000 ...]

Every path may be local or ``s3://``. Each handler prints a JSON summary on stdout and logs progress
(stderr, ``-q`` turns it off); bad inputs raise ``UserError``/``FileNotFoundError``, which ``giellm`` turns into
``giellm: error: ...`` and exit status 2. Heavy imports (fugashi, pyarrow) happen in handlers.
"""

from __future__ import annotations

import argparse
import json
import logging

from giellm_ray.errors import UserError

log = logging.getLogger(__name__)


def _print(summary: dict) -> None:
    print(json.dumps(summary, ensure_ascii=False, indent=2))


def handle_scnm(args: argparse.Namespace) -> int:
    from giellm_ray.data.scnm import build_scnm

    summary = build_scnm(args.ner_json, args.output, args.tl_labels)
    _print(summary)
    if summary["missing_tl_label"]:
        log.warning(
            "giellm data scnm: %d of %d rows have no TL label (target left empty, error "
            "recorded). Stockmark's ner.json has none: give them with --tl-labels FILE, a "
            'CSV with header `curid,label` or JSONL {"curid": ..., "label": ...}, '
            "label one of 社会 文芸 学問 技術 自然.",
            summary["missing_tl_label"],
            summary["rows"],
        )
    return 0


def handle_scpos(args: argparse.Namespace) -> int:
    from giellm_ray.data.pos import PosConfig
    from giellm_ray.data.scpos import SCPOS_TASKS, ScposConfig, build_scpos

    pos = PosConfig(**({"adj_pos": tuple(args.adj_pos)} if args.adj_pos else {}))
    label_map = None
    if args.label_map:
        label_map = {}
        for part in args.label_map:
            key, sep, value = part.partition("=")
            if not sep:
                raise UserError(f"--label-map {part!r} is not VALUE=TL_LABEL (e.g. 5=積極)")
            label_map[key] = value
    cfg = ScposConfig(
        tasks=tuple(args.datasets or SCPOS_TASKS),
        pos=pos,
        chunk_size=args.chunk_size,
        **({"label_map": label_map} if label_map else {}),
    )
    _print(
        build_scpos(
            args.input, args.text_column, args.label_column, args.output, cfg, limit=args.limit
        )
    )
    return 0


def handle_authors(args: argparse.Namespace) -> int:
    from giellm_ray.data.authors import read_authors

    summary = read_authors(args.input, args.output, args.dataset)
    summary.pop("tasks")
    _print(summary)
    return 0


def handle_mix(args: argparse.Namespace) -> int:
    from giellm_ray.data.mix import build_mix, parse_sizes

    sizes = parse_sizes(args.sizes) if args.sizes else None
    manifest = build_mix(
        args.input,
        args.output,
        seed=args.seed,
        sizes=sizes,
        test_sizes=parse_sizes(args.test_sizes),
    )
    _print({k: manifest[k] for k in ("seed", "train_rows", "test_rows", "datasets")})
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="build GIELLM datasets (Parquet)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = data.add_subparsers(dest="data_command", metavar="DATASET", required=True)

    p = sub.add_parser("scnm", help="SCNM from Stockmark's ner.json + a TL label file")
    p.add_argument("--ner-json", required=True, help="Stockmark ner.json (local or s3://)")
    p.add_argument("--tl-labels", help="CSV (curid,label) or JSONL with the TL label per curid")
    p.add_argument("--output", required=True, help="output .parquet file")
    p.set_defaults(handler=handle_scnm)

    p = sub.add_parser("scpos", help="SCPOS:RW/N/Adj/N&Adj from a (text, sentiment) table")
    p.add_argument("--input", required=True, help="CSV, TSV, JSONL, JSON or Parquet (file/dir)")
    p.add_argument("--text-column", required=True)
    p.add_argument("--label-column", required=True)
    p.add_argument(
        "--output",
        required=True,
        help="a .parquet file (all tasks in one) or a directory (one file per task)",
    )
    p.add_argument(
        "--datasets",
        "--tasks",
        dest="datasets",
        nargs="+",
        metavar="NAME",
        help="SCPOS datasets to build (default: all four); --tasks is the old "
        "spelling (elsewhere --tasks names a tasks.json)",
    )
    p.add_argument("--limit", type=int, help="stop after N input rows")
    p.add_argument(
        "--adj-pos",
        nargs="+",
        metavar="POS",
        help="UniDic pos1 tags counted as adjectives (default 形容詞; add 形状詞)",
    )
    p.add_argument(
        "--label-map",
        nargs="+",
        metavar="VALUE=TL",
        help="replace the sentiment label mapping, e.g. positive=積極 negative=消極",
    )
    p.add_argument("--chunk-size", type=int, default=2048, help="rows per chunk/row group")
    p.set_defaults(handler=handle_scpos)

    p = sub.add_parser("authors", help="the authors' released CSV/JSON files")
    p.add_argument("--input", required=True)
    p.add_argument(
        "--output",
        required=True,
        help="a .parquet file (tasks.json is written beside it) or a directory",
    )
    p.add_argument("--dataset", help="dataset name (default: inferred from the instruction word)")
    p.set_defaults(handler=handle_authors)

    p = sub.add_parser("mix", help="the paper's training mix, splits, single-task corpora")
    p.add_argument("--input", required=True, nargs="+", help="dataset Parquet files/dirs")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sizes",
        nargs="+",
        metavar="NAME=N",
        help="training rows per dataset (default: the paper's 4,500-row mix)",
    )
    p.add_argument(
        "--test-sizes",
        nargs="+",
        metavar="NAME=N",
        help="cap test rows per dataset (default: all rows not used for training)",
    )
    p.set_defaults(handler=handle_mix)

"""Where ``giellm score`` may read and write, checked before any work (no Ray): the same place
spelled another way is the same place (local and S3 via moto), overlaps both ways are refused,
and an output that cannot be written is one ``giellm: error:`` line and exit 2."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from giellm_ray import schema as S
from giellm_ray.cli import main
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.driver import prepare
from giellm_ray.score.paths import canonical_s3, locate


def write_input(directory, n: int = 3, filesystem=None) -> None:
    rows = [{S.ID: f"r{i}", S.DATASET: "SCNM", S.TEXT: f"東京{i}"} for i in range(n)]
    path = f"{directory}/a.parquet"
    if filesystem is None:
        os.makedirs(directory, exist_ok=True)
    pq.write_table(S.dataset_table(rows), path, filesystem=filesystem)


def cfg_for(inp: str, out: str, **kw) -> ScoreConfig:
    return ScoreConfig(input=[inp], output=out, **kw)


def test_canonical_s3_collapses_every_spelling():
    want = "bucket/in/x"
    for uri in (
        "s3://bucket/in/x",
        "s3://bucket/in/x/",
        "s3://bucket/in//x",
        "s3://bucket/in/./x",
        "s3://bucket/in/y/../x",
        "s3://Bucket/in/x//",
    ):
        assert canonical_s3(uri) == want, uri
    assert canonical_s3("s3://bucket") == "bucket"


@pytest.mark.parametrize("spelling", ["{d}/in/./x", "{d}/in/y/../x", "{d}/in//x/", "REL", "LINK"])
def test_local_output_equal_to_input_in_any_spelling_is_refused(tmp_path, monkeypatch, spelling):
    inp = tmp_path / "in" / "x"
    write_input(str(inp))
    (tmp_path / "in" / "y").mkdir()
    os.symlink(inp, tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    out = {"REL": "in/x", "LINK": str(tmp_path / "link")}.get(spelling, spelling.format(d=tmp_path))
    with pytest.raises(ValueError, match="is the output directory .* or lies inside it"):
        prepare(cfg_for(str(inp), out))
    assert sorted(os.listdir(inp)) == ["a.parquet"]  # nothing written, nothing deleted


def test_input_inside_output_and_output_inside_input_are_refused(tmp_path, monkeypatch):
    inp = tmp_path / "data" / "in"
    write_input(str(inp))
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(ValueError, match="lies inside it"):
        prepare(cfg_for("./in", str(tmp_path / "data" / ".")))
    with pytest.raises(ValueError, match="output .* lies inside the input"):
        prepare(cfg_for(str(inp), "in/../in/scored"))
    # a sibling whose name merely starts with the input's is no overlap
    plan = prepare(cfg_for(str(inp), str(tmp_path / "data" / "in-scored")))
    assert plan.total == 3


def test_symlinked_parent_is_seen_through(tmp_path):
    real = tmp_path / "real"
    write_input(str(real / "in"))
    os.symlink(real, tmp_path / "alias")
    with pytest.raises(ValueError, match="lies inside it"):
        prepare(cfg_for(str(tmp_path / "alias" / "in"), str(real)))


def test_s3_aliases_are_refused(s3_server):
    fs = locate("s3://giellm-test/x", s3_server).fs
    write_input("giellm-test/alias/in", filesystem=fs)
    for out in (
        "s3://giellm-test/alias/in/",
        "s3://giellm-test/alias//in",
        "s3://giellm-test/alias/./in",
        "s3://giellm-test/alias/z/../in",
        "s3://giellm-test/alias",
        "s3://giellm-test",
    ):
        with pytest.raises(ValueError, match="lies inside it"):
            prepare(cfg_for("s3://giellm-test/alias/in", out, s3_endpoint_url=s3_server))
    with pytest.raises(ValueError, match="output .* lies inside the input"):
        prepare(
            cfg_for(
                "s3://giellm-test/alias/in",
                "s3://giellm-test/alias/in/./out",
                s3_endpoint_url=s3_server,
            )
        )
    assert [
        i.base_name
        for i in fs.get_file_info(__import__("pyarrow.fs").fs.FileSelector("giellm-test/alias/in"))
    ] == ["a.parquet"]


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("giellm: error: "), err
    return err[0]


def test_unwritable_local_output_fails_before_any_work(tmp_path, capsys, tiny_model_dir):
    write_input(str(tmp_path / "in"))
    (tmp_path / "file").write_text("x")
    base = ["score", "--model", tiny_model_dir, "--input", str(tmp_path / "in")]
    line = _cli_error(capsys, [*base, "--output", str(tmp_path / "file" / "out")])
    assert "cannot write to output" in line
    line = _cli_error(capsys, [*base, "--output", str(tmp_path / "file")])
    assert "is a file, not a directory" in line
    line = _cli_error(capsys, [*base, "--output", "/proc/giellm-score-out"])  # even root can't
    assert "cannot write to output /proc/giellm-score-out" in line
    if os.geteuid() != 0:  # permission bits bind everyone but root
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert "cannot write" in _cli_error(capsys, [*base, "--output", str(ro / "out")])


def test_unwritable_s3_output_fails_before_any_work(s3_server, capsys, tiny_model_dir, tmp_path):
    write_input(str(tmp_path / "in"))
    base = [
        "score",
        "--model",
        tiny_model_dir,
        "--input",
        str(tmp_path / "in"),
        "--set",
        f"s3_endpoint_url={s3_server}",
    ]
    line = _cli_error(capsys, [*base, "--output", "s3://no-such-bucket-giellm/out"])
    assert "cannot write to output s3://no-such-bucket-giellm/out" in line
    assert "bucket" in line.lower()
    line = _cli_error(
        capsys,
        [
            "score",
            "--model",
            tiny_model_dir,
            "--input",
            str(tmp_path / "in"),
            "--output",
            "s3://giellm-test/out",
            "--set",
            "s3_endpoint_url=http://127.0.0.1:9",
        ],
    )
    assert "cannot write to output s3://giellm-test/out" in line

"""Local paths and ``s3://`` URIs behind one interface, for every input and output.

``resolve(path)`` returns a ``(pyarrow.fs.FileSystem, path)`` pair: local paths go to
``LocalFileSystem``, ``s3://`` to s3fs wrapped for pyarrow (so Ray Data and ``pyarrow.parquet``
both take it as ``filesystem=``). The S3 endpoint comes from ``AWS_ENDPOINT_URL`` (or
``GIELLM_S3_ENDPOINT_URL``) when set, e.g. a ``moto_server`` on 127.0.0.1 in tests.
``resolve_native(path, endpoint_url)`` is the variant for filesystems shipped to Ray workers:
pyarrow's own ``S3FileSystem`` (picklable) with the endpoint and credentials made explicit.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from giellm_ray.errors import UserError


def is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def s3fs_filesystem():
    """An ``s3fs.S3FileSystem`` honouring ``AWS_ENDPOINT_URL`` / ``GIELLM_S3_ENDPOINT_URL``."""
    import s3fs

    endpoint = os.environ.get("GIELLM_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return s3fs.S3FileSystem(**kwargs)


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path-within-it)`` for a local path or an ``s3://bucket/key`` URI."""
    path = str(path)
    if is_s3(path):
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(s3fs_filesystem()))
        return fs, path[len("s3://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def resolve_native(path: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """Like :func:`resolve`, but S3 gets pyarrow's native, picklable ``S3FileSystem``.

    For filesystems that travel to Ray workers (``giellm score`` hands it to Ray Data's read and
    write tasks): ``endpoint_url`` (else ``GIELLM_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL``) and the
    credentials found on the driver are passed explicitly, so workers started without the
    driver's environment (e.g. a shared local cluster) reach the same endpoint.
    """
    if not is_s3(path):
        return resolve(path)
    endpoint = (
        endpoint_url
        or os.environ.get("GIELLM_S3_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    kwargs: dict = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
        )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), path[len("s3://") :]


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); an ``s3://`` URI without a trailing slash.
    Runs, exports and scores are read back by other processes, from other working directories."""
    return path.rstrip("/") if is_s3(path) else os.path.abspath(os.path.expanduser(path))


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def fs_exists(fs: pafs.FileSystem, path: str) -> bool:
    """``path`` (within ``fs``) exists, as a file or a directory."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    """A JSON object file; ``None`` if absent; ``{}`` if present but empty or not JSON."""
    if not fs_exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        data = f.read()
    try:
        value = json.loads(data) if data.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _is_local(fs: pafs.FileSystem, local: bool | None) -> bool:
    return isinstance(fs, pafs.LocalFileSystem) if local is None else local


def write_json(fs: pafs.FileSystem, path: str, value: dict, local: bool | None = None) -> None:
    """Write atomically: a reader sees the old file, the new one, or none, never a torn one
    (local: tmp + rename; S3 has no rename, but a PUT is visible whole or not at all).
    ``local`` overrides the guess from ``fs``'s type (a wrapped local filesystem)."""
    data = json.dumps(value, ensure_ascii=False, indent=1).encode()
    if not _is_local(fs, local):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def parallel(
    fs: pafs.FileSystem, fn: Callable, items: list, threads: int = 16, local: bool | None = None
) -> list:
    """``fn`` over ``items``: remote requests in ``threads`` parallel streams, local in order."""
    if _is_local(fs, local) or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def _decode_bytes(value: bytes | None, name: str) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    try:
        return value.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        bad = value[exc.start : exc.start + 4]
        return None, f"column '{name}' is not valid UTF-8 (byte {exc.start}: {bad!r})"


def decode_column(col: pa.Array | pa.ChunkedArray, name: str) -> tuple[list, dict[int, str]]:
    """Python values of ``col`` and ``{row: error}`` for the values that would not decode
    (a string column holding invalid UTF-8 reads as ``None`` there, never as a crash)."""
    try:
        return col.to_pylist(), {}
    except Exception:  # noqa: BLE001 - any decode failure: fall back to one value at a time
        pass
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        values, errors = [], {}
        for i, raw in enumerate(col.cast(pa.large_binary()).to_pylist()):
            value, error = _decode_bytes(raw, name)
            values.append(value)
            if error:
                errors[i] = error
        return values, errors
    values, errors = [], {}
    for i in range(len(col)):
        try:
            values.append(col[i].as_py())
        except Exception as exc:  # noqa: BLE001
            values.append(None)
            errors[i] = f"column '{name}' cannot be read: {type(exc).__name__}: {exc}"
    return values, errors


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def copy_dir(src: str, dest: str) -> None:
    """Copy a local directory to ``dest`` (local path or ``s3://``), replacing what is there."""
    if is_s3(dest):
        fs, path = resolve(dest)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(
            src, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
        )
        return
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    os.chmod(dest, 0o755)  # a temporary source directory is private


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file: {path}")
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    fs, p = resolve(path)
    parent = p.rsplit("/", 1)[0]
    if parent and parent != p:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def read_text(path: str) -> str:
    """A UTF-8 text file; a file in another encoding is a clear error, not a traceback."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 4]!r}); "
            "convert it first, e.g. `iconv -f CP932 -t UTF-8`"
        ) from None


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def open_text_lines(path: str) -> Iterator[str]:
    """Stream a UTF-8 text file line by line (for large CSV/JSONL inputs)."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file: {path}")
    with fs.open_input_stream(p) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        try:
            yield from text
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8: {exc.reason} near byte {exc.start}") from None


def list_parquet(fs: pafs.FileSystem, path: str) -> list[str]:
    """Parquet files under ``path`` within ``fs`` (a file, or a directory searched recursively,
    skipping ``_``/``.`` entries such as ``_SUCCESS`` or temporary dirs), sorted."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or directory: {path}")
    if info.type == pafs.FileType.File:
        return [path]
    files = sorted(
        f.path
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if f.type == pafs.FileType.File
        and f.path.endswith(".parquet")
        and not any(part.startswith((".", "_")) for part in f.path[len(path) :].split("/"))
    )
    if not files:
        raise FileNotFoundError(f"no .parquet files under {path}")
    return files


def parquet_files(path: str) -> list[str]:
    """The Parquet files under ``path`` (a local path or ``s3://`` URI), as paths of that kind."""
    fs, p = resolve(path)
    files = list_parquet(fs, p)
    if files == [p]:
        return [path]
    return [("s3://" + f) if is_s3(path) else f for f in files]


def iter_parquet_batches(
    path: str, columns: list[str] | None = None, batch_size: int = 4096
) -> Iterator[pa.RecordBatch]:
    """Stream record batches from a Parquet file or directory (constant memory)."""
    for f in parquet_files(path):
        fs, p = resolve(f)
        pf = pq.ParquetFile(fs.open_input_file(p))
        missing = [c for c in columns or [] if c not in pf.schema_arrow.names]
        if missing:
            raise UserError(f"{f}: missing column(s) {missing}; found {pf.schema_arrow.names}")
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file or directory as one table (for small files: reports, mixes)."""
    batches = list(iter_parquet_batches(path, columns))
    if not batches:
        fs, p = resolve(parquet_files(path)[0])
        empty = pq.read_schema(fs.open_input_file(p)).empty_table()
        return empty.select(columns) if columns else empty
    return pa.Table.from_batches(batches)


def write_parquet(table: pa.Table, path: str) -> None:
    """Write ``table`` to one Parquet file, atomically where the filesystem allows it."""
    fs, p = resolve(path)
    parent = p.rsplit("/", 1)[0]
    if parent and parent != p:
        fs.create_dir(parent, recursive=True)
    if is_s3(path):  # S3 objects appear whole on close
        pq.write_table(table, p, filesystem=fs)
        return
    tmp = f"{p}.tmp-{os.getpid()}"
    pq.write_table(table, tmp, filesystem=fs)
    os.replace(tmp, p)


def dataset(path: str) -> pds.Dataset:
    """A ``pyarrow.dataset`` over a Parquet file or directory."""
    files = parquet_files(path)
    fs, _ = resolve(files[0])
    return pds.dataset([resolve(f)[1] for f in files], format="parquet", filesystem=fs)

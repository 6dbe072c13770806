"""Where a score job reads and writes: resolved locations, the overlap guard, the writability probe.

All three run on the driver before Ray starts, so a bad location is one ``giellm: error:`` line.

* :func:`locate` turns a user's spelling into a :class:`Location` whose ``path`` is canonical and
  is what every read, write and comparison uses. Local: ``realpath`` (symlinks, ``.``, ``..``,
  relative against absolute all collapse to one string). S3: ``bucket/key`` with ``//``, ``.``,
  ``..`` and trailing slashes collapsed; the HTTP layer under pyarrow normalises ``a/./b`` and
  ``a/../b`` itself (measured on moto: ``s3://b/a/./c`` is stored as ``a/c``), so two spellings
  really are one object and must compare equal. ``store`` names the file system (``local`` or
  the S3 endpoint): the same path on two stores is two places.
* :func:`check_disjoint` refuses an input that is the output, lies inside it, or contains it.
  Input inside output: the output's own files (and an older giellm's commit) would overwrite or
  delete it. Output inside input: the next run lists the input recursively and would score its
  own earlier output as input. Local paths are also compared by inode (``samefile``) along the
  ancestors, which catches bind mounts and case-insensitive file systems that strings miss.
* :func:`probe_writable` creates OUTPUT and writes and deletes one small object in it: the only
  test that answers for permissions, read-only mounts, missing buckets and unreachable endpoints
  alike (``os.access`` lies for root and knows nothing of S3 policies). Delete is probed too: the
  commit needs it.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from giellm_ray import io
from giellm_ray.errors import UserError


@dataclass(frozen=True)
class Location:
    """A canonical place: ``fs`` and ``path`` for I/O, ``store`` + ``path`` for identity."""

    uri: str
    fs: pafs.FileSystem
    path: str
    store: str

    @property
    def is_local(self) -> bool:
        return self.store == "local"

    def child(self, *parts: str) -> str:
        """A path (within ``fs``) below this location."""
        return "/".join([self.path.rstrip("/"), *parts])


def canonical_s3(uri: str) -> str:
    """``bucket/key`` of an ``s3://`` URI with ``//``, ``.``, ``..`` and trailing ``/`` collapsed."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UserError(f"{uri}: no bucket name")
    key = posixpath.normpath("/" + key).lstrip("/") if key else ""
    return bucket.lower() + ("/" + key if key else "")


def locate(uri: str, endpoint_url: str | None = None) -> Location:
    """The canonical :class:`Location` of a local path or ``s3://`` URI."""
    uri = str(uri)
    if io.is_s3(uri):
        fs, _ = io.resolve_native(uri, endpoint_url)
        endpoint = (
            endpoint_url
            or os.environ.get("GIELLM_S3_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "aws"
        )
        return Location(uri, fs, canonical_s3(uri), f"s3:{endpoint.rstrip('/')}")
    path = os.path.realpath(os.path.expanduser(uri))
    return Location(uri, pafs.LocalFileSystem(), path, "local")


def _inside_by_string(child: str, parent: str) -> bool:
    parent = parent.rstrip("/")
    return child == parent or child.startswith(parent + "/") or parent == ""


def _inside_by_inode(child: str, parent: str) -> bool:
    """Local only: is ``parent`` (existing) the same directory as ``child`` or an ancestor of it?"""
    if not os.path.exists(parent):
        return False
    probe = child
    while True:
        if os.path.exists(probe) and os.path.samefile(probe, parent):
            return True
        up = os.path.dirname(probe)
        if up == probe:
            return False
        probe = up


def inside(child: Location, parent: Location) -> bool:
    """Is ``child`` the same place as ``parent`` or below it?"""
    if child.store != parent.store:
        return False
    if _inside_by_string(child.path, parent.path):
        return True
    return child.is_local and _inside_by_inode(child.path, parent.path)


def check_disjoint(inputs: list[Location], output: Location) -> None:
    """Refuse inputs and an output that overlap (see the module docstring for why both ways)."""
    for inp in inputs:
        if inside(inp, output):
            raise UserError(
                f"input {inp.uri} is the output directory {output.uri} or lies "
                f"inside it (both resolve to {output.path}); choose another --output"
            )
        if inside(output, inp):
            raise UserError(
                f"output {output.uri} lies inside the input {inp.uri} (resolved: "
                f"{output.path} in {inp.path}); a later run would read it as input"
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def probe_writable(out: Location) -> None:
    """Create ``out`` and write + delete one probe object there; a clear error if that fails."""
    probe = out.child(f"_giellm_probe-{uuid.uuid4().hex[:8]}")
    try:
        info = out.fs.get_file_info(out.path)
        if info.type == pafs.FileType.File:
            raise UserError(f"output {out.uri} is a file, not a directory")
        out.fs.create_dir(out.path, recursive=True)
        with out.fs.open_output_stream(probe) as f:
            f.write(b"giellm write probe\n")
        out.fs.delete_file(probe)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot write to output {out.uri}: {_first_line(exc)}") from None

"""The object-store primitives of a model registry at ``s3://bucket/prefix`` (fsspec/s3fs).

Each primitive is one request, so each is as atomic as S3 makes a single request: read an object
with its ETag, write one (unconditionally, only if absent with ``If-None-Match: *``, or only if
unchanged with ``If-Match: <ETag>``), list, download, delete. What the registry builds on them is
in `vaeguard.registry.ObjectStoreRegistry`.

s3fs is an optional dependency (``pip install 'vaeguard[s3]'``): a local registry never needs it.
The endpoint, region and credentials come from the storage options when given, else from the
standard AWS sources (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_REGION``, profiles, instance roles).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vaeguard.errors import RegistryConflict as Conflict
from vaeguard.errors import RegistryError

#: The one object-store scheme supported.
SCHEME = "s3"
# S3 bucket names: 3 to 63 of lower-case letters, digits, dots and hyphens, a letter or digit at
# both ends.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._=+-]{1,255}", re.ASCII)
# `Path("s3://b/p")` is "s3:/b/p": the command line's Path options hand the URI over like that.
_URI_RE = re.compile(r"s3:/{1,2}([^/]*)(/.*)?", re.ASCII | re.DOTALL)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def looks_like_uri(root: object) -> bool:
    """True for ``s3://…`` (or its `Path`-collapsed ``s3:/…``), or any other ``scheme://``."""
    text = str(root) if isinstance(root, str | os.PathLike) else ""
    return text.startswith("s3:/") or _SCHEME_RE.match(text) is not None


def parse_uri(root: object) -> tuple[str, str]:
    """``(bucket, prefix)`` of an ``s3://bucket[/prefix]`` URI; anything else: one line.

    The prefix is ``/``-separated segments of letters, digits and ``._=+-`` (no ``..``, no
    empty segment), so a prefix never names a parent and every key under it is plain.
    """
    text = str(root) if isinstance(root, str | os.PathLike) else repr(root)
    shown = repr(text[:60])
    m = _URI_RE.fullmatch(text)
    if m is None:
        raise RegistryError(
            f"invalid registry URI {shown}: expected s3://bucket/prefix (the only object store "
            "supported) or a directory"
        )
    bucket, prefix = m.group(1), (m.group(2) or "").strip("/")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise RegistryError(
            f"invalid registry URI {shown}: the bucket name must be 3 to 63 lower-case letters, "
            "digits, dots or hyphens"
        )
    segments = prefix.split("/") if prefix else []
    if any(not _SEGMENT_RE.fullmatch(s) or set(s) == {"."} for s in segments):
        raise RegistryError(
            f"invalid registry URI {shown}: each part of the prefix must be letters, digits or "
            "._=+- (no empty part, no '.' or '..')"
        )
    return bucket, "/".join(segments)


def canonical_uri(root: object) -> str:
    bucket, prefix = parse_uri(root)
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


class ObjectStore:
    """Objects under one ``s3://bucket/prefix``, named relative to it (``"v0001/bundle.json"``)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        try:
            import s3fs
        except ImportError:
            raise RegistryError(
                f"registry {uri}: an s3:// registry needs s3fs (pip install 'vaeguard[s3]')"
            ) from None
        self.bucket, self.prefix = parse_uri(uri)
        self.uri = canonical_uri(uri)
        options = dict(storage_options or {})
        # Listings must never be served from a cache: readers poll for new versions.
        options.setdefault("use_listings_cache", False)
        options.setdefault("skip_instance_cache", True)
        self.fs = s3fs.S3FileSystem(**options)

    @contextlib.contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        """Any failure but a missing object or a lost condition: one `RegistryError` line."""
        try:
            yield
        except (FileNotFoundError, RegistryError):
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:200]
            raise RegistryError(
                f"registry {self.uri}: {name or 'listing'}: {type(exc).__name__}: {text}"
            ) from None

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _path(self, name: str) -> str:
        return f"{self.bucket}/{self.key(name)}"

    # -- reading ------------------------------------------------------------------------------

    def get(self, name: str) -> tuple[bytes, str] | None:
        """(content, ETag) of one object, read in one request; None when there is none."""
        from fsspec.asyn import sync

        async def _get():
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key(name))
            async with response["Body"] as body:
                return await body.read(), response["ETag"]

        try:
            with self._errors(name):
                return sync(self.fs.loop, _get)
        except FileNotFoundError:
            return None

    def read(self, name: str) -> bytes | None:
        got = self.get(name)
        return None if got is None else got[0]

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """The objects that exist among ``names``, fetched concurrently."""
        if not names:
            return {}
        with self._errors(names[0]):
            found = self.fs.cat([self._path(n) for n in names], on_error="omit")
        start = len(self._path(""))
        return {p[start:]: data for p, data in found.items()}

    def list(self, under: str = "") -> dict[str, int]:
        """Name → size of every object under ``under`` (the whole prefix by default)."""
        base = self._path(under).rstrip("/")
        try:
            with self._errors(under):
                found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        start = len(self._path(""))
        return {p[start:]: int(d.get("size") or 0) for p, d in found.items()}

    def download(self, name: str, local: Path) -> None:
        with self._errors(name):
            self.fs.get_file(self._path(name), str(local))

    # -- writing ------------------------------------------------------------------------------

    def put(
        self, name: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> str:
        """Write one object in one PUT; returns its ETag. A failed condition raises `Conflict`."""
        conditions: dict[str, str] = {}
        if if_absent:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        try:
            with self._errors(name):
                try:
                    response = self.fs.call_s3(
                        "put_object",
                        Bucket=self.bucket,
                        Key=self.key(name),
                        Body=data,
                        **conditions,
                    )
                except OSError as exc:
                    if conditions and _is_conflict(exc):
                        raise Conflict(
                            f"{self.uri}/{name} changed under a conditional write"
                        ) from None
                    raise
        except FileNotFoundError as exc:  # e.g. no such bucket
            raise RegistryError(f"registry {self.uri}: {name}: {exc}") from None
        return response.get("ETag", "")

    def upload(self, local: Path, name: str) -> None:
        with self._errors(name):
            self.fs.put_file(str(local), self._path(name))

    def delete(self, names: list[str]) -> None:
        if names:
            with self._errors(names[0]):
                self.fs.rm([self._path(n) for n in names])


def _is_conflict(exc: BaseException) -> bool:
    """A failed precondition (412), or S3's 409 for a conditional write racing another one."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code")
    return code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}

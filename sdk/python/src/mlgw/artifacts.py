"""Artifacts: code and model files kept in the gateway's artifact store, so that they reach
every target the same way.

A file is uploaded as it is; a directory as a gzip-compressed tar archive. Packing a
directory honours the ``.gitignore`` and ``.mlgwignore`` files found in it (gitignore rules:
a file below applies to its own directory and overrides the ones above it; ``.mlgwignore``
overrides ``.gitignore`` beside it), leaves out ``.git`` and ``__pycache__``, keeps a symbolic
link only if it leads to somewhere inside the directory and refuses any other before anything
is sent. The archive is deterministic — sorted entries, no timestamps, owners or umask in it —
so the same tree packs to the same bytes and, the store being content-addressed, is stored
(and, here, sent) once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import gzip
import hashlib
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import grpc
import pathspec

from . import _display
from ._common import progress_class, timestamp, to_pandas
from ._proto.mlgw.v1 import artifacts_pb2
from ._stream import pump
from .errors import InvalidSpec, MlgwError, NotFound, Unsupported, from_rpc_error

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Artifact", "ArtifactKind", "ArtifactList", "Packed", "is_uri", "pack"]

ArtifactKind = Literal["file", "directory", "unknown"]

KINDS: dict[int, ArtifactKind] = {
    artifacts_pb2.ARTIFACT_KIND_FILE: "file",
    artifacts_pb2.ARTIFACT_KIND_DIRECTORY: "directory",
}

#: Content goes in chunks of this size (the gateway's Download sends the same).
CHUNK = 1 << 20
#: Transfers at least this large show a progress bar.
PROGRESS_FROM = 4 << 20

IGNORE_FILES = (".gitignore", ".mlgwignore")
# Git's own data, and bytecode caches: those are keyed to the source files' mtimes, which
# packing resets, so they would be stale where the code is unpacked and would make the same
# code pack to different bytes on every Python version.
SKIPPED = frozenset({".git", "__pycache__"})
# 1980-01-01, the earliest time every archive format and unpacker takes without complaint.
MTIME = 315532800

_URI = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|sha256:)")


def is_uri(value: str) -> bool:
    """Whether ``value`` names an artifact (``file://…``, ``s3://…``, ``sha256:…``, any
    ``scheme://``) rather than a local path."""
    return bool(_URI.match(value))


# -- packing ------------------------------------------------------------------------------------


@dataclass
class Packed:
    """Content ready to upload: a file opened for reading (a temporary one for a packed
    directory, removed on :meth:`close`), its size and hex sha256. ``entries`` are the
    archive's member names, in order (directories end with ``/``); empty for a file."""

    file: IO[bytes]
    size: int
    sha256: str
    kind: ArtifactKind
    name: str
    entries: tuple[str, ...] = ()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Packed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Rules:
    """The ignore rules of one directory, ``base`` (relative to the packed root)."""

    base: str
    spec: pathspec.GitIgnoreSpec


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: Literal["dir", "file", "link"]
    path: Path
    linkname: str = ""
    executable: bool = False


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


def pack(path: str | os.PathLike[str], name: str | None = None, *, field: str = "path") -> Packed:
    """Prepares ``path`` for upload: a file as it is, a directory packed (see the module's
    documentation). ``name`` defaults to the path's last component.

    A symbolic link out of the directory, a loop of links or a device, FIFO or socket in it is
    refused with :class:`~mlgw.InvalidSpec` naming the path (``field`` is the argument it came
    from), before anything is sent."""
    src = Path(path)
    try:
        # The path the caller named may itself be a link: they chose it.
        st = src.stat()
    except FileNotFoundError:
        raise InvalidSpec(f"{field}: {src} does not exist", field) from None
    root = src.resolve()
    label = root.name if name is None else name
    if stat.S_ISDIR(st.st_mode):
        return _pack_dir(root, label, field)
    if stat.S_ISREG(st.st_mode):
        f = open(root, "rb")  # noqa: SIM115 - handed to the caller in Packed
        try:
            h = hashlib.sha256()
            size = 0
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return Packed(f, size, h.hexdigest(), "file", label)
    raise InvalidSpec(f"{field}: {src} is neither a file nor a directory", field)


def _pack_dir(root: Path, label: str, field: str) -> Packed:
    entries = _walk(root, field)
    out = tempfile.TemporaryFile(prefix="mlgw-pack-")  # noqa: SIM115 - handed on in Packed
    try:
        sink = _Hashing(out)
        # No file name and a zero mtime in the gzip header: the bytes depend on the tree only.
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for e in entries:
                _add(tar, e)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    names = tuple(e.name + "/" if e.kind == "dir" else e.name for e in entries)
    return Packed(out, sink.size, sink.sha256.hexdigest(), "directory", label, names)


def _add(tar: tarfile.TarFile, e: _Entry) -> None:
    info = tarfile.TarInfo(e.name)
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if e.kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    elif e.kind == "link":
        info.type = tarfile.SYMTYPE
        info.mode = 0o777
        info.linkname = e.linkname
        tar.addfile(info)
    else:
        # Not following a link that replaced the file since it was listed.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(e.path, flags)
        except OSError as err:
            raise OSError(err.errno, f"cannot pack {e.path}: {err.strerror}") from err
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, f"cannot pack {e.path}: no longer a regular file")
            info.type = tarfile.REGTYPE
            info.mode = 0o755 if e.executable else 0o644
            info.size = st.st_size
            try:
                tar.addfile(info, f)
            except OSError as err:  # it shrank while being read
                raise OSError(err.errno, f"cannot pack {e.path}: {err}") from err


def _load_rules(directory: Path, base: str) -> _Rules | None:
    lines: list[str] = []
    for fname in IGNORE_FILES:
        p = directory / fname
        with contextlib.suppress(OSError):
            if stat.S_ISREG(p.lstat().st_mode):
                lines.extend(p.read_text(encoding="utf-8", errors="replace").splitlines())
    if not any(ln.strip() and not ln.startswith("#") for ln in lines):
        return None
    return _Rules(base, pathspec.GitIgnoreSpec.from_lines(lines))


def _ignored(rules: Sequence[_Rules], rel: str, is_dir: bool) -> bool:
    # The deepest directory's rules that say anything decide, as in git.
    for r in reversed(rules):
        sub = rel[len(r.base) + 1 :] if r.base else rel
        result = r.spec.check_file(sub + "/" if is_dir else sub)
        if result.include is not None:
            return bool(result.include)
    return False


def _special(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _walk(root: Path, field: str) -> list[_Entry]:
    out: list[_Entry] = []

    def visit(directory: Path, rel: str, rules: list[_Rules]) -> None:
        own = _load_rules(directory, rel)
        if own is not None:
            rules = [*rules, own]
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda c: c.name)
        for child in children:
            if child.name in SKIPPED:
                continue
            crel = f"{rel}/{child.name}" if rel else child.name
            path = Path(child.path)
            mode = child.stat(follow_symlinks=False).st_mode
            is_dir = stat.S_ISDIR(mode)
            if _ignored(rules, crel, is_dir):
                continue
            if is_dir:
                out.append(_Entry(crel, "dir", path))
                visit(path, crel, rules)
            elif stat.S_ISREG(mode):
                out.append(_Entry(crel, "file", path, executable=bool(mode & 0o111)))
            elif stat.S_ISLNK(mode):
                out.append(_Entry(crel, "link", path, linkname=_link_inside(root, path, field)))
            else:
                raise InvalidSpec(
                    f"{field}: {path} is {_special(mode)}, which cannot be packed; "
                    f"leave it out with a line in {root / '.mlgwignore'}",
                    field,
                )

    visit(root, "", [])
    return out


def _link_inside(root: Path, link: Path, field: str) -> str:
    """The link's target relative to its own directory, when it leads inside ``root``."""
    text = os.readlink(link)
    try:
        target = Path(os.path.realpath(link, strict=True))
    except FileNotFoundError:
        # Dangling: kept if it would dangle inside the directory, as git keeps it.
        target = Path(os.path.realpath(link))
    except OSError as e:
        raise InvalidSpec(
            f"{field}: {link} is a symbolic link that cannot be resolved ({e.strerror})", field
        ) from None
    if not target.is_relative_to(root):
        raise InvalidSpec(
            f"{field}: {link} is a symbolic link to {text}, outside {root}: links out of the "
            "directory are never followed (copy what it points to into the directory, or "
            f"leave the link out with a line in {root / '.mlgwignore'})",
            field,
        )
    # Relative, through real directories only: it resolves the same wherever it is unpacked.
    return os.path.relpath(target, os.path.realpath(link.parent))


# -- the service --------------------------------------------------------------------------------


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled or total < PROGRESS_FROM:
        return None
    return progress_class()(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=True
    )


_KIND_VALUES = {v: k for k, v in KINDS.items()}


def upload(
    client: Client, packed: Packed, *, progress: bool = True, timeout: float | None = None
) -> Artifact:
    """Sends packed content to the gateway, unless it holds the same bytes already."""
    client._check_open()
    kind = _KIND_VALUES[packed.kind]
    # Content-addressed: bytes the store holds need not travel again.
    try:
        known = client._call(
            client._artifacts.Stat,
            artifacts_pb2.StatArtifactRequest(uri=f"sha256:{packed.sha256}"),
        )
        if known.kind == kind:
            return Artifact(client, known)
    except NotFound:
        pass
    except Unsupported as e:
        # A gateway without the service answers a bare UNIMPLEMENTED, which says nothing.
        raise Unsupported(
            f"the gateway at {client.address} has no artifact store (ArtifactService); "
            f"it is older than this SDK ({e.message})",
            e.code,
        ) from None
    bar = _bar(packed.size, f"uploading {packed.name}", progress)

    def requests() -> Iterator[artifacts_pb2.UploadRequest]:
        header = artifacts_pb2.UploadHeader(
            name=packed.name, kind=kind, sha256=packed.sha256, size=packed.size
        )
        yield artifacts_pb2.UploadRequest(header=header)
        packed.file.seek(0)
        while chunk := packed.file.read(CHUNK):
            yield artifacts_pb2.UploadRequest(chunk=chunk)
            if bar is not None:
                bar.update(len(chunk))

    try:
        message = client._artifacts.Upload(requests(), timeout=timeout, metadata=client._metadata)
    except grpc.RpcError as e:
        if bar is not None:
            bar.colour = "red"
        raise from_rpc_error(e) from None
    finally:
        if bar is not None:
            bar.close()
    return Artifact(client, message)


class Artifact:
    """Code or a model in the gateway's artifact store. Pass it (or its :attr:`uri`) as a
    job's ``code=``, an input, or a model to :meth:`Client.deploy`."""

    def __init__(self, client: Client, message: artifacts_pb2.Artifact) -> None:
        self._client = client
        self._pb = message

    @property
    def uri(self) -> str:
        """Where it is (``file:///…``, ``s3://…``); names it for good."""
        return self._pb.uri

    @property
    def sha256(self) -> str:
        return self._pb.sha256

    @property
    def size(self) -> int:
        """Bytes stored (for a directory, of its archive)."""
        return self._pb.size

    @property
    def kind(self) -> ArtifactKind:
        """``file``, or ``directory`` (a tar archive, unpacked where it is used)."""
        return KINDS.get(self._pb.kind, "unknown")

    @property
    def name(self) -> str:
        """A label for people; not part of its identity."""
        return self._pb.name

    @property
    def created_at(self) -> _dt.datetime | None:
        return timestamp(self._pb, "created_at")

    @property
    def proto(self) -> artifacts_pb2.Artifact:
        """The underlying ``mlgw.v1.Artifact`` message."""
        return self._pb

    def download(
        self, path: str | os.PathLike[str], *, progress: bool = True, timeout: float | None = None
    ) -> Path:
        """Streams the content into the file ``path`` (a directory artifact arrives as its tar
        archive) and returns the path. The file appears only once all of it has arrived and
        its sha256 matches; a broken transfer leaves nothing at ``path``."""
        dest = Path(path)
        if dest.is_dir():
            raise IsADirectoryError(f"{dest} is a directory; download() wants a file path")
        c = self._client
        part = tempfile.NamedTemporaryFile(  # noqa: SIM115 - renamed or removed below
            dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
        )
        bar = _bar(self.size, f"downloading {self.name or self.sha256[:12]}", progress)
        try:
            h = hashlib.sha256()
            size = 0
            with part:
                call = c._open_stream(
                    c._artifacts.Download,
                    artifacts_pb2.DownloadArtifactRequest(uri=self.uri),
                    timeout,
                )
                for msg in pump(call, None):
                    part.write(msg.data)
                    h.update(msg.data)
                    size += len(msg.data)
                    if bar is not None:
                        bar.update(len(msg.data))
            if (self.sha256 and h.hexdigest() != self.sha256) or size != self.size:
                raise MlgwError(
                    f"download of {self.uri} is corrupt: got {size} bytes with sha256 "
                    f"{h.hexdigest()}, not {self.size} bytes with sha256 {self.sha256}"
                )
            os.replace(part.name, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part.name)
            raise
        finally:
            if bar is not None:
                bar.close()
        return dest

    def refresh(self) -> Artifact:
        """Asks the gateway again (Stat); returns ``self``."""
        c = self._client
        self._pb = c._call(c._artifacts.Stat, artifacts_pb2.StatArtifactRequest(uri=self.uri))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": self.created_at,
        }

    def __repr__(self) -> str:
        return f"Artifact(uri={self.uri!r}, name={self.name!r}, kind={self.kind!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Artifact) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(("artifact", self.uri))

    def _repr_html_(self) -> str:
        return _display.record(f"Artifact {self.name or self.sha256[:12]}", self.to_dict())


class ArtifactList(list[Artifact]):
    """Artifacts, newest first. ``to_pandas()`` gives a DataFrame; Jupyter shows a table."""

    COLUMNS = ("name", "kind", "size", "uri", "created_at")

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one row per artifact."""
        return to_pandas((a.to_dict() for a in self), _ARTIFACT_COLS)

    def _repr_html_(self) -> str:
        rows = [a.to_dict() for a in self]
        return _display.table(rows, self.COLUMNS, f"{len(self)} artifacts")


_ARTIFACT_COLS = ("uri", "name", "kind", "size", "sha256", "created_at")

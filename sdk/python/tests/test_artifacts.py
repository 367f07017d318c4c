"""Packing code for upload, without a gateway: what goes in (ignore files, ``.git``), that the
same tree packs to the same bytes, that nothing leads out of the directory, and that a
refusal comes before anything is sent. Round trips through the real gateway are in
``test_integration.py``."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import mlgw
from mlgw._proto.mlgw.v1 import artifacts_pb2, artifacts_pb2_grpc, training_pb2
from mlgw.artifacts import MTIME, Packed, is_uri, pack
from mlgw.endpoint import model_ref

# Nothing listens here: a call that were made would fail Unavailable, not InvalidSpec.
NOWHERE = "127.0.0.1:1"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def members(packed: Packed) -> dict[str, tarfile.TarInfo]:
    packed.file.seek(0)
    with tarfile.open(fileobj=io.BytesIO(packed.file.read()), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def packed_names(path: Path) -> list[str]:
    with pack(path) as p:
        return list(p.entries)


# -- what goes in -------------------------------------------------------------------------------


def test_gitignore_and_mlgwignore_rules(tmp_path: Path) -> None:
    src = write(
        tmp_path / "src",
        {
            ".gitignore": "# build output\nbuild/\n*.log\n!keep.log\n/top-only.txt\ndata/*\n",
            ".mlgwignore": "!data/small.csv\nnotebooks/\n",
            "train.py": "print('hi')",
            "build/lib.py": "x",
            "run.log": "x",
            "keep.log": "x",
            "top-only.txt": "x",
            "pkg/top-only.txt": "anchored patterns apply at their own level only",
            "pkg/build/gen.py": "a directory pattern matches at any depth",
            "data/big.bin": "x",
            "data/small.csv": "1,2",
            "notebooks/scratch.ipynb": "{}",
            # A deeper file overrides the ones above it.
            # Anchored in pkg/: pkg/gen, not pkg/sub/gen.
            "pkg/.gitignore": "*.txt\n!wanted.log\n/gen/\n",
            "pkg/gen/x.py": "x",
            "pkg/sub/gen/y.py": "x",
            "pkg/wanted.log": "x",
            "pkg/notes.txt": "x",
            "pkg/mod.py": "x",
        },
    )
    assert packed_names(src) == [
        ".gitignore",
        ".mlgwignore",
        "data/",
        "data/small.csv",
        "keep.log",
        "pkg/",
        "pkg/.gitignore",
        "pkg/mod.py",
        "pkg/sub/",
        "pkg/sub/gen/",
        "pkg/sub/gen/y.py",
        "pkg/wanted.log",
        "train.py",
    ]


def test_an_excluded_directory_is_not_entered(tmp_path: Path) -> None:
    # As in git: a file cannot be re-included when a directory above it is excluded.
    src = write(tmp_path / "src", {".gitignore": "out/\n!out/model.bin\n", "out/model.bin": "x"})
    assert packed_names(src) == [".gitignore"]


def test_mlgwignore_overrides_gitignore_beside_it(tmp_path: Path) -> None:
    src = write(
        tmp_path / "src",
        {".gitignore": "*.csv\n", ".mlgwignore": "!train.csv\nsecret.env\n", "train.csv": "1"},
    )
    (src / "secret.env").write_text("TOKEN=x")
    (src / "other.csv").write_text("2")
    assert packed_names(src) == [".gitignore", ".mlgwignore", "train.csv"]


def test_git_and_bytecode_caches_are_left_out(tmp_path: Path) -> None:
    src = write(
        tmp_path / "src",
        {
            ".git/HEAD": "ref: refs/heads/main",
            ".git/objects/ab/cdef": "x",
            "sub/.git": "gitdir: ../../.git/worktrees/sub",  # a worktree's .git is a file
            "__pycache__/train.cpython-311.pyc": "x",
            "pkg/__pycache__/mod.cpython-311.pyc": "x",
            "pkg/mod.py": "x",
            ".github/ci.yml": "hidden files other than .git go",
        },
    )
    assert packed_names(src) == [".github/", ".github/ci.yml", "pkg/", "pkg/mod.py", "sub/"]


def test_a_file_goes_as_it_is(tmp_path: Path) -> None:
    f = tmp_path / "model.joblib"
    f.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    with pack(f) as p:
        assert (p.kind, p.name, p.entries) == ("file", "model.joblib", ())
        assert p.size == f.stat().st_size
        assert p.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
        assert p.file.read() == f.read_bytes()
    with pack(f, "named") as p:
        assert p.name == "named"


def test_a_directory_unpacks_to_the_same_tree(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"a.py": "a", "pkg/b.py": "b", "pkg/deep/c.txt": "é"})
    (src / "empty").mkdir()
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o700)
    (src / "alias.py").symlink_to("pkg/b.py")
    (src / "data").symlink_to(src / "pkg" / "deep")  # absolute, but inside
    with pack(src) as p:
        assert p.kind == "directory" and p.name == "src"
        p.file.seek(0)
        data = p.file.read()
        assert len(data) == p.size and hashlib.sha256(data).hexdigest() == p.sha256
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        # The "data" filter refuses absolute paths, "..", links out and devices.
        tar.extractall(out, filter="data")
    assert (out / "pkg/deep/c.txt").read_text() == "é" and (out / "empty").is_dir()
    assert os.access(out / "run.sh", os.X_OK) and not os.access(out / "a.py", os.X_OK)
    assert os.readlink(out / "alias.py") == "pkg/b.py"
    # Rewritten relative, so it leads to the same place wherever the tree is unpacked.
    assert os.readlink(out / "data") == "pkg/deep" and (out / "data" / "c.txt").is_file()


# -- determinism --------------------------------------------------------------------------------


def test_the_same_tree_packs_to_the_same_bytes(tmp_path: Path) -> None:
    files = {"train.py": "print(1)", "pkg/__init__.py": "", "pkg/mod.py": "x = 1", "z/y/x": "1"}
    a = write(tmp_path / "one" / "src", files)
    # The same files elsewhere, created in another order, with other times and permissions.
    b = tmp_path / "two" / "code"
    old = os.umask(0o077)
    try:
        write(b, dict(reversed(files.items())))
    finally:
        os.umask(old)
    for i, p in enumerate(sorted(b.rglob("*"))):
        os.utime(p, (1_000_000 + i, 2_000_000_000 - i))
    assert (a / "train.py").stat().st_mode != (b / "train.py").stat().st_mode
    with pack(a) as pa, pack(b) as pb:
        assert pa.sha256 == pb.sha256 and pa.size == pb.size
        ma = members(pa)
        assert all(m.mtime == MTIME and m.uid == m.gid == 0 for m in ma.values())
        assert all(m.uname == m.gname == "" for m in ma.values())
        pa.file.seek(0)
        header = pa.file.read(10)
        # gzip: no timestamp (bytes 4-7) and no file name (flag 0x08) in the header.
        assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\0\0\0\0" and not header[3] & 0x08
    with pack(a) as again:
        assert again.sha256 == pa.sha256
    (a / "pkg" / "mod.py").write_text("x = 2")
    with pack(a) as changed:
        assert changed.sha256 != pa.sha256


def test_the_archive_is_gzip_of_a_plain_tar(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"a.py": "a"})
    with pack(src) as p:
        p.file.seek(0)
        raw = gzip.decompress(p.file.read())
    assert len(raw) % 512 == 0 and raw[257:262] == b"ustar"


# -- nothing leads out --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda src, out: (src / "leak").symlink_to(out / "secret"), id="absolute"),
        pytest.param(lambda src, out: (src / "leak").symlink_to("../outside/secret"), id="up"),
        pytest.param(lambda src, out: (src / "leak").symlink_to(out), id="directory"),
        # Lexically "outside/secret", inside; but "hop" is the directory itself, so ".." from
        # it leaves the directory.
        pytest.param(
            lambda src, out: (
                (src / "hop").symlink_to("."),
                (src / "leak").symlink_to("hop/../outside/secret"),
            ),
            id="through-a-link-inside",
        ),
        pytest.param(
            lambda src, out: (src / "leak").symlink_to("../outside/missing"), id="dangling"
        ),
    ],
)
def test_a_link_out_of_the_directory_is_refused(tmp_path: Path, make: object) -> None:
    src = write(tmp_path / "src", {"train.py": "x"})
    out = write(tmp_path / "outside", {"secret": "s3cr3t"})
    make(src, out)  # type: ignore[operator]
    with pytest.raises(mlgw.InvalidSpec) as e:
        pack(src)
    assert e.value.field == "path" and e.value.code is None
    assert e.value.message.startswith("path: ")
    assert str(src / "leak") in e.value.message
    assert "outside" in e.value.message and ".mlgwignore" in e.value.message


def test_a_link_out_that_is_ignored_is_no_problem(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"train.py": "x", ".mlgwignore": "venv\n"})
    (src / "venv").symlink_to("/usr")
    assert packed_names(src) == [".mlgwignore", "train.py"]


def test_a_loop_of_links_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"train.py": "x"})
    (src / "a").symlink_to("b")
    (src / "b").symlink_to("a")
    with pytest.raises(mlgw.InvalidSpec, match="cannot be resolved") as e:
        pack(src)
    assert str(src / "a") in e.value.message


def test_a_dangling_link_inside_is_kept(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"train.py": "x"})
    (src / "later").symlink_to("outputs/model.bin")
    with pack(src) as p:
        assert members(p)["later"].linkname == "outputs/model.bin"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"train.py": "x"})
    os.mkfifo(src / "pipe")
    with pytest.raises(mlgw.InvalidSpec, match="a FIFO") as e:
        pack(src)
    assert str(src / "pipe") in e.value.message


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(mlgw.InvalidSpec, match="does not exist") as e:
        pack(tmp_path / "nope", field="spec.code_uri")
    assert e.value.field == "spec.code_uri"


def test_refusals_come_before_anything_is_sent(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"train.py": "x"})
    (src / "leak").symlink_to("/etc/passwd")
    with mlgw.Client(NOWHERE, timeout=5) as c:
        with pytest.raises(mlgw.InvalidSpec) as e:
            c.upload(src)
        assert e.value.field == "path" and e.value.code is None
        with pytest.raises(mlgw.InvalidSpec) as e:
            c.train(["python", "train.py"], code=src)
        assert e.value.field == "spec.code_uri" and str(src / "leak") in e.value.message
        with pytest.raises(mlgw.InvalidSpec) as e:
            c.train(["python", "train.py"], code=str(tmp_path / "missing"))
        assert e.value.field == "spec.code_uri" and "does not exist" in e.value.message
        (tmp_path / "train.py").write_text("x")
        with pytest.raises(mlgw.InvalidSpec, match="must be a directory"):
            c.train(["python", "train.py"], code=tmp_path / "train.py")
        as_file = mlgw.Artifact(
            c, artifacts_pb2.Artifact(uri="file:///a/m", kind=artifacts_pb2.ARTIFACT_KIND_FILE)
        )
        with pytest.raises(mlgw.InvalidSpec, match="file artifact"):
            c.train(["python", "train.py"], code=as_file)
        # A spec refused on its own is refused before the code is packed and sent.
        with pytest.raises(mlgw.InvalidSpec) as e:
            c.train(["python", "train.py"], code=src, nodes=-1)
        assert e.value.field == "spec.resources.nodes"


def test_uris_and_paths() -> None:
    for uri in ("file:///data/a", "s3://bucket/key", "sha256:" + "0" * 64, "gs://b/k"):
        assert is_uri(uri), uri
    for path in ("./src", "src", "/abs/src", "C:/src", "file:/x", "my:src"):
        assert not is_uri(path), path


def test_what_an_endpoint_is_deployed_from() -> None:
    job = mlgw.Job(None, training_pb2.Job(id="j-123", output_uri="file:///out"))  # type: ignore[arg-type]
    art = mlgw.Artifact(None, artifacts_pb2.Artifact(uri="s3://b/models/x"))  # type: ignore[arg-type]
    assert model_ref(job) == "j-123"  # the gateway resolves the job to its output
    assert model_ref(art) == "s3://b/models/x"
    assert model_ref("j-456") == "j-456" and model_ref("file:///m") == "file:///m"


# -- a broken download (a test double: the real gateway serves the right bytes) ----------------


class CorruptingArtifactService(artifacts_pb2_grpc.ArtifactServiceServicer):
    """Test double for faults the real gateway cannot be made to produce: a Download that
    answers other bytes than the artifact's, or breaks off half way."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after

    def Download(
        self, request: artifacts_pb2.DownloadArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[artifacts_pb2.ArtifactChunk]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "store went away")
            yield artifacts_pb2.ArtifactChunk(data=chunk)


@pytest.fixture()
def serve() -> Iterator[object]:
    servers: list[grpc.Server] = []

    def start(service: CorruptingArtifactService | None) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        if service is not None:
            artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(grace=None)


def test_a_gateway_without_an_artifact_store_says_so(tmp_path: Path, serve: object) -> None:
    """A gRPC server without the ArtifactService stands in for an older gateway."""
    address = serve(None)  # type: ignore[operator]
    src = write(tmp_path / "src", {"train.py": "x"})
    with mlgw.Client(address, timeout=10) as c:
        with pytest.raises(mlgw.Unsupported, match="no artifact store") as e:
            c.upload(src)
        assert e.value.code == grpc.StatusCode.UNIMPLEMENTED and address in e.value.message
        with pytest.raises(mlgw.Unsupported, match="ArtifactService"):
            c.train(["python", "train.py"], code=src)


@pytest.mark.parametrize("fault", ["other-bytes", "cut-off"])
def test_a_broken_download_leaves_nothing(tmp_path: Path, serve: object, fault: str) -> None:
    good = os.urandom(5 << 20)
    art_pb = artifacts_pb2.Artifact(
        uri="file:///store/x", sha256=hashlib.sha256(good).hexdigest(), size=len(good), name="x"
    )
    chunks = [good[i : i + (1 << 20)] for i in range(0, len(good), 1 << 20)]
    if fault == "other-bytes":
        service = CorruptingArtifactService([*chunks[:-1], b"\0" * len(chunks[-1])])
    else:
        service = CorruptingArtifactService(chunks, fail_after=3)
    address = serve(service)  # type: ignore[operator]
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"what was here before")
    with mlgw.Client(address, timeout=10) as c:
        art = mlgw.Artifact(c, art_pb)
        want = mlgw.MlgwError if fault == "other-bytes" else mlgw.Unavailable
        with pytest.raises(want) as e:
            art.download(dest, progress=False)
        if fault == "other-bytes":
            assert "corrupt" in e.value.message and art.sha256 in e.value.message
        # What was there stays; no partial file is left beside it.
        assert dest.read_bytes() == b"what was here before"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
        # The same service, unbroken, delivers.
        service.chunks, service.fail_after = chunks, None
        assert art.download(dest, progress=False) == dest and dest.read_bytes() == good
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
        with pytest.raises(IsADirectoryError):
            art.download(tmp_path)

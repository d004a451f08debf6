"""Downloaded models proved against the digests their download published (shardscan.digests):
a huggingface_hub cache snapshot and a local_dir download laid out by huggingface_hub's own
functions, and sha256sum files written by coreutils itself. Oracles: hashlib and sha256sum."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash
from safetensors.numpy import save_file
from typer.testing import CliRunner

import shardscan
from shardscan.cli import app
from shardscan.digests import find_expected, git_blob_sha1, parse_sum_line

hf_file_download = pytest.importorskip("huggingface_hub.file_download")
from huggingface_hub import scan_cache_dir, try_to_load_from_cache  # noqa: E402
from huggingface_hub._local_folder import read_download_metadata, write_download_metadata  # noqa: E402

REPO_ID = "tiny-org/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_model(directory: Path) -> dict[str, bytes]:
    """A two-tensor safetensors file (an LFS file on the hub) and a small JSON file (a plain
    git file), written by safetensors and json; returns name -> bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    save_file({"embed.weight": rng.standard_normal((64, 32)).astype(np.float32),
               "head.weight": rng.standard_normal((16, 32)).astype(np.float32)}, directory / "model.safetensors")
    (directory / "generation_config.json").write_text(json.dumps({"max_length": 32}))
    return {name: (directory / name).read_bytes() for name in ("model.safetensors", "generation_config.json")}


def git_sha1_oracle(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hub_cache(cache: Path, files: dict[str, bytes]) -> Path:
    """A huggingface_hub cache of REPO_ID at COMMIT, made as hf_hub_download makes it: blobs
    named by their etag (the SHA-256 for the LFS file, the git blob SHA-1 otherwise), the
    snapshot's files relative symlinks to them (huggingface_hub's own _create_symlink), and
    refs/main naming the commit. Returns the snapshot directory."""
    storage = cache / hf_file_download.repo_folder_name(repo_id=REPO_ID, repo_type="model")
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_sha1_oracle(data)
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = Path(hf_file_download._get_pointer_path(os.fspath(storage), COMMIT, name))
        pointer.parent.mkdir(parents=True, exist_ok=True)
        hf_file_download._create_symlink(os.fspath(blob), os.fspath(pointer), new_blob=True)
    hf_file_download._cache_commit_hash_for_specific_revision(os.fspath(storage), "main", COMMIT)
    return storage / "snapshots" / COMMIT


def flip_tensor_byte(path: Path) -> None:
    """Flips one byte inside the last tensor's data: the header and the size stay valid."""
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot leaves the mtime alone


@pytest.fixture
def snapshot(tmp_path):
    files = make_model(tmp_path / "src")
    return hub_cache(tmp_path / "hub", files), files


def test_the_hub_cache_is_one_huggingface_hub_itself_reads_as_valid(snapshot, tmp_path):
    path, files = snapshot
    info = scan_cache_dir(tmp_path / "hub")
    assert info.warnings == []
    (repo,) = info.repos
    assert repo.repo_id == REPO_ID and {r.commit_hash for r in repo.revisions} == {COMMIT}
    assert {f.file_name for f in next(iter(repo.revisions)).files} == set(files)
    assert try_to_load_from_cache(REPO_ID, "model.safetensors", cache_dir=tmp_path / "hub") == os.fspath(path / "model.safetensors")
    found = {e.name: (e.algorithm, e.digest) for e in find_expected(path).expected}
    assert found == {"model.safetensors": ("sha256", hashlib.sha256(files["model.safetensors"]).hexdigest()),
                     "generation_config.json": ("git-sha1", git_sha1_oracle(files["generation_config.json"]))}


def test_a_clean_snapshot_passes_without_being_asked(snapshot):
    path, _ = snapshot
    report = shardscan.check(path)
    assert report.ok, report.errors
    assert (report.files, report.tensors) == (1, 2)  # the weights were read through the links
    assert any("2 files match their published digests (huggingface_hub cache)" in n for n in report.notes)


def test_a_flipped_tensor_byte_fails_with_the_file_and_both_digests(snapshot):
    path, files = snapshot
    flip_tensor_byte(path / "model.safetensors")  # through the symlink: the blob changes
    actual = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    expected = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert shardscan.scan_paths([path / "model.safetensors"]).ok  # the structure is intact
    report = shardscan.check(path)
    assert not report.ok
    (error,) = report.errors
    assert error.file == "model.safetensors"
    assert expected in error.error and actual in error.error and "SHA-256 mismatch" in error.error
    assert shardscan.check(path, sha256=False).ok  # --no-sha256 skips it


def test_a_changed_plain_git_file_fails_on_its_git_sha1(snapshot):
    path, files = snapshot
    blob = Path(os.path.realpath(path / "generation_config.json"))
    blob.write_text(json.dumps({"max_length": 33}))
    (error,) = shardscan.check(path).errors
    assert error.file == "generation_config.json" and "git blob SHA-1 mismatch" in error.error
    assert git_sha1_oracle(files["generation_config.json"]) in error.error
    assert git_sha1_oracle(blob.read_bytes()) == git_blob_sha1(blob) and git_blob_sha1(blob) in error.error


def test_a_snapshot_named_by_a_relative_path_is_found(snapshot, tmp_path, monkeypatch):
    path, _ = snapshot
    flip_tensor_byte(path / "model.safetensors")
    monkeypatch.chdir(tmp_path / "hub")
    (error,) = shardscan.check(os.path.relpath(path, tmp_path / "hub")).errors
    assert error.file == "model.safetensors" and "SHA-256 mismatch" in error.error


def test_a_missing_blob_fails_and_one_file_checks_alone(snapshot):
    path, _ = snapshot
    os.unlink(os.path.realpath(path / "generation_config.json"))
    errors = shardscan.check(path).errors
    assert [e.file for e in errors] == ["generation_config.json"] and "absent" in errors[0].error
    # the safetensors file checked alone is judged on its own digest only
    assert shardscan.check(path / "model.safetensors").ok


def test_a_snapshot_copied_without_its_blobs_names_the_links_that_lead_nowhere(snapshot, tmp_path):
    path, _ = snapshot
    copy = tmp_path / "copied"
    shutil.copytree(path, copy, symlinks=True)  # as `cp -a`: the relative links now lead nowhere
    target = os.readlink(copy / "model.safetensors")
    assert not (copy / target).exists()
    result = CliRunner().invoke(app, ["check", os.fspath(copy)])
    assert result.exit_code == 1
    assert f"model.safetensors: FAILED a symbolic link to {target}, which does not exist" in result.stdout


def test_the_cli_says_so_and_exits_1(snapshot):
    path, _ = snapshot
    flip_tensor_byte(path / "model.safetensors")
    result = CliRunner().invoke(app, ["check", os.fspath(path), "--json"])
    assert result.exit_code == 1
    (error,) = json.loads(result.stdout)["errors"]
    assert error["file"] == "model.safetensors" and "SHA-256 mismatch" in error["error"]
    assert CliRunner().invoke(app, ["check", os.fspath(path), "--no-sha256"]).exit_code == 0


# ---- local_dir downloads -------------------------------------------------------------------


@pytest.fixture
def local_dir(tmp_path):
    """A `hf download --local-dir` layout: the files, then huggingface_hub's own metadata
    for each (commit, etag, timestamp), written after the file as hf_hub_download does."""
    root = tmp_path / "local"
    files = make_model(root)
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_sha1_oracle(data)
        write_download_metadata(root, name, COMMIT, etag)
        assert read_download_metadata(root, name).etag == etag  # huggingface_hub trusts it
    return root, files


def test_a_local_dir_download_is_verified_from_its_metadata(local_dir):
    root, files = local_dir
    assert shardscan.check(root).ok
    flip_tensor_byte(root / "model.safetensors")
    (error,) = shardscan.check(root).errors
    assert error.file == "model.safetensors"
    assert hashlib.sha256(files["model.safetensors"]).hexdigest() in error.error
    assert hashlib.sha256((root / "model.safetensors").read_bytes()).hexdigest() in error.error
    assert ".cache/huggingface/download/model.safetensors.metadata" in error.error


def test_a_mismatch_names_the_tensors_a_manifest_finds_changed(local_dir):
    root, _ = local_dir
    shardscan.write_manifest(root)
    flip_tensor_byte(root / "model.safetensors")
    report = shardscan.check(root)
    assert [(m.key, m.field) for m in report.mismatched] == [("head.weight", "checksum")]
    (error,) = [e for e in report.errors if "SHA-256 mismatch" in e.error]
    assert error.file == "model.safetensors" and "differs from the manifest: head.weight" in error.error


def test_a_file_edited_after_the_download_says_so(local_dir):
    root, _ = local_dir
    (root / "generation_config.json").write_text("{}")
    os.utime(root / "generation_config.json", (2**31, 2**31))
    (error,) = shardscan.check(root).errors
    assert "git blob SHA-1 mismatch" in error.error and "modified after huggingface_hub recorded" in error.error


# ---- sha256sum files ---------------------------------------------------------------------


@pytest.mark.parametrize("flags, sums_name", [
    ([], "SHA256SUMS"),                  # text mode: "<hex>  name"
    (["-b"], "SHA256SUMS"),              # binary mode: "<hex> *name"
    (["--tag"], "SHA256SUMS"),           # BSD form: "SHA256 (name) = <hex>"
    ([], "model.safetensors.sha256"),    # one file's own sum file
])
def test_sums_written_by_coreutils_are_verified(tmp_path, flags, sums_name):
    root = tmp_path / "model"
    files = make_model(root)
    names = ["model.safetensors"] if sums_name.endswith(".sha256") else sorted(files)
    sums = subprocess.run(["sha256sum", *flags, *names], cwd=root, check=True, capture_output=True).stdout
    (root / sums_name).write_bytes(sums)
    assert subprocess.run(["sha256sum", "-c", sums_name], cwd=root, capture_output=True).returncode == 0
    report = shardscan.check(root)
    assert report.ok and any(f"{len(names)} files match" in n for n in report.notes)
    flip_tensor_byte(root / "model.safetensors")
    assert subprocess.run(["sha256sum", "-c", sums_name], cwd=root, capture_output=True).returncode == 1
    (error,) = shardscan.check(root).errors
    assert error.file == "model.safetensors" and f"({sums_name} line " in error.error


def test_a_bare_digest_file_and_escaped_names_parse(tmp_path):
    digest = "ab" * 32
    # the bare digest some hubs publish beside a file
    assert parse_sum_line(digest.upper(), "model.bin") == (digest, "model.bin")
    # coreutils escapes a backslash or newline in a name and marks the line with a backslash
    assert parse_sum_line(f"\\{digest}  a\\nb\\\\c") == (digest, "a\nb\\c")
    assert parse_sum_line("# comment") is None and parse_sum_line("not a sum") is None
    path = tmp_path / "odd\nname.txt"
    path.write_bytes(b"x")
    sums = subprocess.run(["sha256sum", path.name], cwd=tmp_path, check=True, capture_output=True).stdout.decode()
    assert parse_sum_line(sums.rstrip("\n")) == (hashlib.sha256(b"x").hexdigest(), path.name)


def test_scan_writes_sums_that_coreutils_and_check_accept(tmp_path):
    root = tmp_path / "model"
    files = make_model(root)
    result = CliRunner().invoke(app, ["scan", os.fspath(root), "--files-out", os.fspath(root / "SHA256SUMS")])
    assert result.exit_code == 0, result.output
    assert subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=root, capture_output=True).returncode == 0
    assert sorted(line.split("  ")[1] for line in (root / "SHA256SUMS").read_text().splitlines()) == sorted(files)
    assert shardscan.check(root).ok


def test_files_out_never_overwrites_an_input_nor_goes_to_stdout(tmp_path):
    root = tmp_path / "model"
    files = make_model(root)
    weights = root / "model.safetensors"
    result = CliRunner().invoke(app, ["scan", os.fspath(root), "--files-out", os.fspath(weights)])
    assert result.exit_code == 2 and "refusing to overwrite" in result.output
    assert weights.read_bytes() == files["model.safetensors"]
    assert CliRunner().invoke(app, ["scan", os.fspath(root), "--files-out", "-"]).exit_code == 2


def test_the_per_file_table_matches_hashlib_and_xxhash(tmp_path):
    root = tmp_path / "model"
    files = make_model(root)
    result = CliRunner().invoke(app, ["scan", os.fspath(root), "--files-out", os.fspath(tmp_path / "files.parquet")])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "files.parquet")
    assert table.column_names == ["file", "size", "sha256", "xxh3_128", "error"]
    want = sorted((n, len(d), hashlib.sha256(d).hexdigest(), xxhash.xxh3_128_hexdigest(d), None) for n, d in files.items())
    assert sorted(zip(*(table.column(c).to_pylist() for c in table.column_names))) == want
    assert shardscan.file_digests(root).equals(table)


def test_forced_sha256_digests_every_file_without_a_source(tmp_path):
    root = tmp_path / "model"
    make_model(root)
    assert not any("published" in n for n in shardscan.check(root).notes)
    report = shardscan.check(root, sha256=True)
    assert report.ok and any("no published SHA-256 to compare with: digested 2 files" in n for n in report.notes)


def test_audit_and_latest_verify_too(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2):
        make_model(run / f"checkpoint-{step}")
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        subprocess.run("sha256sum model.safetensors > SHA256SUMS", shell=True, cwd=run / f"checkpoint-{step}", check=True)
    flip_tensor_byte(run / "checkpoint-2" / "model.safetensors")
    result = shardscan.audit(run)
    assert [row.ok for row in result.rows] == [True, False] and "SHA-256 mismatch" in result.rows[1].problem
    assert shardscan.latest(run) == run / "checkpoint-1"
    assert shardscan.latest(run, sha256=False) == run / "checkpoint-2"
    cli = CliRunner().invoke(app, ["latest", os.fspath(run), "--no-sha256"])
    assert cli.exit_code == 0 and cli.stdout.strip() == os.fspath(run / "checkpoint-2")
    assert CliRunner().invoke(app, ["audit", os.fspath(run)]).exit_code == 1


def test_a_real_subprocess_checks_a_hub_snapshot(snapshot):
    path, _ = snapshot
    flip_tensor_byte(path / "model.safetensors")
    env = {**os.environ, "PYTHONPATH": os.fspath(Path(shardscan.__file__).parents[1])}
    done = subprocess.run([os.sys.executable, "-m", "shardscan", "check", os.fspath(path)], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "model.safetensors: FAILED SHA-256 mismatch" in done.stdout


def test_random_names_do_not_confuse_the_cache_finder(tmp_path):
    # A directory that merely looks like a snapshot, outside any models--* repo, is no source.
    fake = tmp_path / "snapshots" / secrets.token_hex(20)
    make_model(fake)
    assert find_expected(fake).expected == []


# ---- OpenSSF model-signing ---------------------------------------------------------------


def test_a_model_signing_signature_lists_the_digests_verified(tmp_path):
    model_signing = pytest.importorskip("model_signing")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "pub.pem").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    root = tmp_path / "model"
    files = make_model(root)
    signature = root / "model.sig"
    # As model-signing's own CLI does: the signature inside the model is left out of what it signs.
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[signature])
    model_signing.signing.Config().use_elliptic_key_signer(private_key=tmp_path / "key.pem").set_hashing_config(
        hashing).sign(root, signature)
    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=tmp_path / "pub.pem")
    verifier.verify(root, signature)  # the oracle: model-signing itself accepts the model
    found = {e.name: e.digest for e in find_expected(root).expected}
    assert found == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert shardscan.check(root).ok
    flip_tensor_byte(root / "model.safetensors")
    with pytest.raises(ValueError):
        verifier.verify(root, signature)
    (error,) = shardscan.check(root).errors
    assert error.file == "model.safetensors" and "model.sig (model-signing, signature not verified)" in error.error


def test_a_signature_whose_resources_were_edited_is_refused(tmp_path):
    import base64

    root = tmp_path / "model"
    make_model(root)
    statement = {"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "model", "digest": {"sha256": "00" * 32}}],
                 "predicateType": "https://model_signing/signature/v1.0",
                 "predicate": {"serialization": {"method": "files", "hash_type": "sha256"},
                               "resources": [{"name": "model.safetensors", "algorithm": "sha256", "digest": "11" * 32}]}}
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    (root / "model.sig").write_text(json.dumps({"dsseEnvelope": {"payload": payload, "payloadType": "application/vnd.in-toto+json"}}))
    sources = find_expected(root)
    assert sources.expected == [] and "do not hash to the subject digest" in sources.warnings[0]
    report = shardscan.check(root)
    assert report.ok and any("model.sig" in w for w in report.warnings)


# ---- hostile sources ---------------------------------------------------------------------


def test_hostile_sources_never_reach_outside_the_checkpoint(tmp_path):
    root = tmp_path / "model"
    files = make_model(root)
    outside = tmp_path / "secret"
    outside.write_bytes(b"not yours")
    good = hashlib.sha256(files["model.safetensors"]).hexdigest()
    lines = [
        f"{'00' * 32}  ../secret",            # a name above the checkpoint
        f"{'00' * 32}  {outside}",            # an absolute name
        f"\\{'00' * 32}  a\\nb\\0c",          # an escape coreutils never writes (kept as written)
        "garbage line",
        f"{good}  model.safetensors",
    ]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    os.mkfifo(root / "fifo.sha256")           # never opened: it could block forever
    (root / "model.sig").write_text("{not json")
    # a snapshot-looking link that points outside its repo's blobs is no source
    snap = tmp_path / "hub" / "models--a--b" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    os.symlink(outside, snap / "file")
    (tmp_path / "hub" / "models--a--b" / "blobs").mkdir()
    assert find_expected(snap).expected == []
    sources = find_expected(root)
    assert [(e.name, e.digest) for e in sources.expected] == [("a\nb\\0c", "00" * 32), ("model.safetensors", good)]
    assert any("line 4 is not in sha256sum format" in w for w in sources.warnings)
    assert any("model.sig" in w for w in sources.warnings)
    report = shardscan.check(root)
    assert [e.file for e in report.errors] == ["a\nb\\0c"] and "absent" in report.errors[0].error
    assert outside.read_bytes() == b"not yours"


def test_auditing_the_whole_hub_cache_checks_every_snapshot(snapshot, tmp_path):
    path, _ = snapshot
    assert shardscan.audit(tmp_path / "hub").ok
    flip_tensor_byte(path / "model.safetensors")
    (row,) = shardscan.audit(tmp_path / "hub").rows
    assert row.path == os.fspath(path) and not row.ok and "model.safetensors: SHA-256 mismatch" in row.problem

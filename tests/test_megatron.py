"""Megatron-LM checkpoints in megatron-core's torch_dist format: the resume set of an
iter_NNNNNNN directory is every file megatron-core's `dist_checkpointing.load` reads, and
that load is the oracle: it loads what `latest` picks and fails on what `latest` passed over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import producers
import shardscan
from shardscan.resume import resume_set

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")

TRACKER = producers.MEGATRON_TRACKER
OLDER, NEWER = (producers.megatron_iteration_dir(i) for i in producers.MEGATRON_ITERATIONS)
#: What megatron-core writes for one iteration on 2 ranks: DCP's metadata, two files per rank
#: (its default of two writer threads), the unsharded state and the format's config.
ITERATION_FILES = (".metadata", "__0_0.distcp", "__0_1.distcp", "__1_0.distcp", "__1_1.distcp", "common.pt",
                   "metadata.json")
#: Where a flipped byte lands in the files that hold no tensor, found by their bytes alone: a
#: tensor name in DCP's pickled metadata, a key of the pickled common state, the backend name.
FLIP_AT = {".metadata": b"model.0.weight", "common.pt": b"opt_param_scheduler", "metadata.json": b"torch_dist"}


def test_megatron_core_writes_the_torch_dist_layout(megatron_run: Path) -> None:
    assert producers.files_under(megatron_run) == {TRACKER} | {f"{d}/{f}" for d in (OLDER, NEWER) for f in ITERATION_FILES}
    assert (megatron_run / TRACKER).read_text() == str(producers.MEGATRON_ITERATIONS[-1])
    config = json.loads((megatron_run / NEWER / "metadata.json").read_text())
    assert config["sharded_backend"] == "torch_dist" and config["common_backend"] == "torch"


def test_the_resume_set_is_the_dcp_files_and_the_common_state(megatron_run: Path) -> None:
    assert {m.name: m.role for m in resume_set(megatron_run / NEWER).members} == {".": "model", "common.pt": "objects"}
    report = shardscan.check(megatron_run / NEWER)
    assert report.ok, report.to_dict()
    assert report.files == 2 and report.tensors == 12


def test_an_intact_run_audits_clean_and_megatron_core_loads_every_iteration(megatron_run: Path) -> None:
    result = shardscan.audit(megatron_run)
    assert [(Path(r.path).name, r.format, r.ok) for r in result.rows] == [(OLDER, "megatron", True),
                                                                          (NEWER, "megatron", True)]
    assert shardscan.latest(megatron_run) == megatron_run / NEWER
    outcome = producers.megatron_load([megatron_run / OLDER, megatron_run / NEWER])
    assert outcome.loaded == [megatron_run / OLDER, megatron_run / NEWER], outcome.tracebacks


def _flip(path: Path) -> None:
    """One flipped byte: inside a tensor megatron-core loads (a .distcp file), or inside the
    bytes FLIP_AT names."""
    if path.name in FLIP_AT:
        producers.flip_byte(path, path.read_bytes().index(FLIP_AT[path.name]) + 2)
        return
    iteration = producers.MEGATRON_ITERATIONS[-1]
    for tensor in producers.megatron_training_state(iteration).values():
        halves = tensor.chunk(producers.MEGATRON_WORLD) if tensor.dim() == 2 else (tensor,)
        for part in halves:
            try:
                producers.flip_tensor_byte(path, part)
                return
            except LookupError:
                continue
    raise LookupError(f"no tensor of iteration {iteration} found in {path}")


def _names(errors, name: str) -> bool:
    return any(e.file == name or name in e.error for e in errors)


@pytest.mark.parametrize("how", ["cut", "deleted", "flipped"])
@pytest.mark.parametrize("name", ITERATION_FILES)
def test_damage_to_any_file_of_the_set_skips_the_iteration(megatron_run: Path, tmp_path: Path, name: str,
                                                           how: str) -> None:
    run = producers.copy_checkpoint(megatron_run, tmp_path / "run")
    damaged = run / NEWER / name
    if how == "cut":
        producers.truncate_at(damaged, 0.5)
    elif how == "deleted":
        producers.delete(damaged)
    else:
        shardscan.write_manifest(run / NEWER)
        _flip(damaged)
    report = shardscan.check(run / NEWER)
    assert not report.ok and _names(report.errors, name), report.to_dict()
    # tensors lost with a .distcp file are the model's, named by their own keys
    assert all(key.split(".")[0] in ("model", "optimizer") for key in report.missing), report.missing
    rows = {Path(r.path).name: r for r in shardscan.audit(run).rows}
    assert rows[OLDER].ok and not rows[NEWER].ok and _names(rows[NEWER].file_errors, name)
    assert shardscan.latest(run) == run / OLDER
    # megatron-core agrees: the iteration latest picks loads, the one it skipped raises, except
    # that a flipped tensor byte loads without a word, with values other than those saved
    outcome = producers.megatron_load([run / OLDER, run / NEWER])
    assert outcome.loaded == [run / OLDER] and outcome.failed == run / NEWER, outcome.tracebacks
    silent = how == "flipped" and name not in FLIP_AT
    assert all((producers.MEGATRON_CHANGED in t) == silent for t in outcome.tracebacks.values()), outcome.tracebacks


@pytest.mark.parametrize("config, problem", [
    ({"sharded_backend": "zarr"}, "sharded_backend is 'zarr'"),
    ({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "compression": "none"}, "unknown field"),
])
def test_metadata_json_must_name_a_backend_megatron_core_loads(megatron_run: Path, tmp_path: Path,
                                                               config: dict, problem: str) -> None:
    run = producers.copy_checkpoint(megatron_run, tmp_path / "run")
    (run / NEWER / "metadata.json").write_text(json.dumps(config))
    errors = shardscan.check(run / NEWER).errors
    assert [e.file for e in errors] == ["metadata.json"] and problem in errors[0].error
    assert shardscan.latest(run) == run / OLDER
    outcome = producers.megatron_load([run / OLDER, run / NEWER])
    assert outcome.loaded == [run / OLDER] and outcome.failed == run / NEWER, outcome.tracebacks


@pytest.mark.parametrize("how, row, problem", [
    ("deleted", TRACKER, "absent: Megatron-LM's --load run then starts from random weights"),
    ("cut", "iter_0000002", f"{TRACKER} names iter_0000002, which does not exist"),  # "20" cut to "2"
    ("flipped", TRACKER, "not UTF-8 text"),
])
def test_a_broken_tracker_is_named_and_latest_still_finds_the_newest_iteration(
        megatron_run: Path, tmp_path: Path, how: str, row: str, problem: str) -> None:
    run = producers.copy_checkpoint(megatron_run, tmp_path / "run")
    tracker = run / TRACKER
    if how == "deleted":
        producers.delete(tracker)
    elif how == "cut":
        producers.truncate_at(tracker, 0.5)
    else:
        producers.flip_byte(tracker, 0)
    result = shardscan.audit(run)
    rows = {Path(r.path).name: r for r in result.rows}
    assert not result.ok and not rows[row].ok and rows[row].problem.startswith(problem)
    assert rows[OLDER].ok and rows[NEWER].ok
    # `latest` names an iteration to resume with --ckpt-step, which never reads the tracker
    assert shardscan.latest(run) == run / NEWER
    assert producers.megatron_load([run / NEWER]).loaded == [run / NEWER]


def test_an_iteration_newer_than_the_tracker_never_finished(megatron_run: Path, tmp_path: Path) -> None:
    run = producers.copy_checkpoint(megatron_run, tmp_path / "run")
    # Megatron-LM rewrites the tracker last: a save killed before that leaves it naming the older one
    (run / TRACKER).write_text(str(producers.MEGATRON_ITERATIONS[0]))
    rows = {Path(r.path).name: r for r in shardscan.audit(run).rows}
    assert rows[OLDER].ok and rows[NEWER].problem.startswith(f"newer than {OLDER}, which {TRACKER} names")
    assert shardscan.latest(run) == run / OLDER


@pytest.mark.parametrize("text, problem", [
    ("abc", "holds 'abc', neither an iteration number nor 'release'"),
    ("-1", "holds -1: Megatron-LM's read_metadata asserts"),
    ("9" * 4000, "holds 999999999999999999999999..., an iteration of 4000 digits"),
    ("", "holds '', neither"),
])
def test_a_tracker_holding_no_iteration_is_its_own_failed_row(megatron_run: Path, tmp_path: Path, text: str,
                                                              problem: str) -> None:
    run = producers.copy_checkpoint(megatron_run, tmp_path / "run")
    (run / TRACKER).write_text(text)
    rows = {Path(r.path).name: r for r in shardscan.audit(run).rows}
    assert rows[TRACKER].problem.startswith(problem) and rows[OLDER].ok and rows[NEWER].ok
    assert shardscan.latest(run) == run / NEWER


def test_the_cli_names_the_iteration_to_resume_with_ckpt_step(megatron_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shardscan.cli import app

    run = producers.copy_checkpoint(megatron_run, tmp_path / "run")
    producers.delete(run / NEWER / "common.pt")
    runner = CliRunner()
    picked = runner.invoke(app, ["latest", str(run)])
    assert picked.exit_code == 0 and picked.stdout.strip() == str(run / OLDER), picked.output
    audited = runner.invoke(app, ["audit", str(run), "--json"])
    assert audited.exit_code == 1, audited.output
    rows = json.loads(audited.stdout)["checkpoints"]
    assert [(Path(r["path"]).name, r["format"], r["ok"]) for r in rows] == [(OLDER, "megatron", True),
                                                                            (NEWER, "megatron", False)]
    assert [e["file"] for e in rows[1]["file_errors"]] == ["common.pt"]

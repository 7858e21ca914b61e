"""The benchmark's results files: typed rows that give the files back exactly, and the quiet-run rule (a committed
file was taken on a clean tree and an idle machine, or says why it is kept)."""

import json
import os
from pathlib import Path

import pytest

from experiments import benchmark
from experiments.benchmark import environment, rows

REPO = Path(__file__).resolve().parents[2]
FAST = ["--quick", "--rounds", "1", "--inner", "1", "--warmup", "0"]
# The files the performance tables of README and docs/ are generated from (benchmarks/README.md).
TABLE_FILES = sorted((REPO / "benchmarks").glob("*.json"))
ALL_FILES = TABLE_FILES + sorted((REPO / "benchmarks" / "custom_jvp").glob("*.json"))


# ------------------------------------------------------------------------------------------- typed rows


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_a_results_file_round_trips_through_typed_rows(path):
    """Loading a committed file into typed rows and writing them again gives the file back, byte for byte."""
    meta, typed = benchmark.load_results(path)
    assert all(isinstance(r, benchmark.Row) and r.timing is not None for r in typed)
    original = json.loads(path.read_text())["rows"]
    dumped = [r.to_json() for r in typed]
    assert dumped == original
    assert [list(r) for r in dumped] == [list(r) for r in original]  # same keys, same order
    assert rows.results_json(meta, typed) == path.read_text()


def test_typed_rows_read_their_fields_from_the_files_keys():
    _, typed = benchmark.load_results(REPO / "benchmarks" / "cpu.json")
    raw = json.loads((REPO / "benchmarks" / "cpu.json").read_text())["rows"]
    for r, d in zip(typed, raw, strict=True):
        assert (r.case, r.pass_, r.shape) == (d["case"], d["pass"], tuple(d["shape"]))
        for impl in benchmark.ALL_IMPLS:
            assert r.measured(impl).ms == d[f"{impl}_ms"]
        flax = r.measured("flax")
        assert (flax.vs.median, flax.vs.iqr, flax.vs.best) == (d["jaxnorm_vs_flax"], tuple(d["jaxnorm_vs_flax_iqr"]),
                                                               d["jaxnorm_vs_flax_best"])
        assert flax.traffic.cheapest == d["flax_hlo_traffic"]
        assert r.check.errors["jaxnorm"].dx == d["check"]["jaxnorm"]["dx"]


def test_a_check_only_row_has_no_timing_and_round_trips():
    row = json.loads((REPO / "benchmarks" / "cpu.json").read_text())["rows"][0]
    keys = list(row)
    check_only = {k: row[k] for k in keys[:keys.index("pass")]}  # what --check-only writes
    typed = benchmark.Row.from_json(check_only)
    assert typed.timing is None and typed.pass_ is None and typed.measured("flax").ms is None
    assert typed.to_json() == check_only


def test_a_row_missing_a_key_is_a_clear_error(tmp_path, capsys):
    doc = json.loads((REPO / "benchmarks" / "cpu.json").read_text())
    del doc["rows"][3]["flax_ms_min"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    assert benchmark.cli(["--table", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.json: row 3" in err and "flax_ms_min" in err


# ------------------------------------------------------------------------------------------- the quiet-run rule

QUIET = {"git_commit": "0123abc", "git_dirty": False, "cpu_count": 2, "loadavg_1min_start": 0.3,
         "loadavg_1min_end": 2.1}


@pytest.mark.parametrize("change, reason", [
    ({"git_dirty": True}, "working tree differed"),
    ({"git_dirty": None}, "unknown"),
    ({"loadavg_1min_start": 0.6}, "at the start > 0.5"),  # a quarter of 2 CPUs
    ({"loadavg_1min_end": 2.6}, "at the end > 2.5"),  # the benchmark's own 2 threads + a quarter of 2 CPUs
    ({"loadavg_1min_start": None}, "load average None at the start"),
])
def test_noise_names_a_dirty_or_loaded_run(change, reason):
    assert environment.noise(QUIET) == []
    problems = environment.noise(QUIET | change)
    assert len(problems) == 1 and reason in problems[0]


def test_a_caveat_is_shown_under_its_files_heading(tmp_path):
    doc = json.loads((REPO / "benchmarks" / "cpu.json").read_text())
    plain, labelled = tmp_path / "plain.json", tmp_path / "labelled.json"
    plain.write_text(json.dumps(doc))
    labelled.write_text(json.dumps(doc | {"meta": doc["meta"] | {"caveat": "taken while a build ran"}}))
    lines = benchmark.render_tables([labelled]).splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("#### "))
    assert lines[heading + 4] == "Caveat: taken while a build ran"
    assert "Caveat" not in benchmark.render_tables([plain])


@pytest.mark.parametrize("load, warned", [(9.0, True), (0.0, False)])
def test_a_run_on_a_loaded_machine_warns(load, warned, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(environment, "_git", lambda: {"git_commit": "0123abc", "git_dirty": False})
    benchmark.main(FAST + ["--ops", "bn_nchw", "--no-torch", "--caveat", "a test", "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert ("benchmark: warning: not a quiet run" in err) == warned
    assert ("load average 9.0 at the start" in err) == warned
    meta = json.loads((tmp_path / "r.json").read_text())["meta"]
    assert (meta["loadavg_1min_start"], meta["loadavg_1min_end"], meta["caveat"]) == (load, load, "a test")


def test_the_quiet_run_rule_covers_the_committed_results():
    assert {"cpu.json", "cpu_offset.json"} <= {p.name for p in TABLE_FILES}
    for path in TABLE_FILES:
        meta, _ = benchmark.load_results(path)
        assert {"git_dirty", "cpu_count", "loadavg_1min_start", "loadavg_1min_end"} <= set(meta), path.name


def test_committed_results_are_quiet_runs_or_say_why_they_are_kept():
    """README and docs/ quote these files: each was taken on a clean tree and an idle machine, or carries a caveat
    (``--caveat``), which its tables show."""
    problems = []
    for path in TABLE_FILES:
        meta, _ = benchmark.load_results(path)
        if meta.get("caveat"):
            assert f"Caveat: {meta['caveat']}" in benchmark.render_tables([path])
        else:
            problems += [f"{path.name}: {p}" for p in environment.noise(meta)]
    assert problems == []

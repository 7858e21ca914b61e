"""The benchmark's results files: typed rows that give the files back exactly."""

import json
from pathlib import Path

import pytest

from experiments import benchmark
from experiments.benchmark import rows

REPO = Path(__file__).resolve().parents[2]
ALL_FILES = sorted((REPO / "benchmarks").glob("*.json")) + sorted((REPO / "benchmarks" / "custom_jvp").glob("*.json"))


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

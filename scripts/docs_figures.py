"""Copy the README's figures from a ``python -m experiments.reproduce`` output folder into ``docs/``.

    python -m experiments.reproduce --out results && python scripts/docs_figures.py results

Writes ``docs/<figure>.png`` and ``docs/figures.json`` (for each figure: where it came from, the date of the run and
the data it used), which README's captions quote and a test compares with README.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
FIGURES = {  # docs name: (file in the reproduce folder, what it shows)
    "mlp_stds.png": ("mlp_study/mlp_stds.png", "activation std per layer of the 100-layer MLP"),
    "lenet_curves.png": ("lenet/curves.png", "LeNet and LeNet_bn training curves"),
    "norm_axes.png": ("norm_compare/norm_axes.png", "which axes BN, LN, IN and GN normalize"),
    "small_batch.png": ("small_batch/small_batch.png", "validation accuracy against batch size per norm"),
}


def provenance(results: Path) -> dict[str, str]:
    """The run's date, command and LeNet data source, read from its report and files."""
    report = (results / "report.md").read_text()
    date = re.search(r"Date: (\d{4}-\d{2}-\d{2})", report)
    command = re.search(r"Command: `([^`]+)`", report)
    run = json.loads((results / "lenet" / "run.json").read_text())
    if not date or not command:
        raise SystemExit(f"docs_figures: {results / 'report.md'} is not a reproduce report")
    return {"date": date.group(1), "command": command.group(1), "data": run["data_source"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="the --out folder of python -m experiments.reproduce")
    p.add_argument("--docs", type=Path, default=DOCS, help="where the figures go (default %(default)s)")
    args = p.parse_args(argv)
    info = provenance(args.results)
    args.docs.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, (source, what) in FIGURES.items():
        shutil.copyfile(args.results / source, args.docs / name)
        index[name] = {"shows": what, "source": source, **info}
    (args.docs / "figures.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"copied {len(index)} figures into {args.docs} (run of {info['date']}, data: {info['data']})")
    return index


if __name__ == "__main__":
    main()

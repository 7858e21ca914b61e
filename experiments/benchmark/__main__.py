"""``python -m experiments.benchmark``: the command line (:mod:`experiments.benchmark.command_line`)."""

import sys

from experiments.benchmark.command_line import cli

if __name__ == "__main__":
    sys.exit(cli())

"""The console commands' entry points (setup.cfg) and their argument parsers.

Each command parses and checks its arguments here first, with nothing heavier than argparse and yaml, so that
`--help` and a bad argument answer at once; torch, Lightning and datasets load only once a command will run
(the module that does the work is imported then, on purpose).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import DEFAULT_DATASET, ConfigError, RunConfig, build_parser, resolve

TRAIN = "Train the ResNet-9 on CIFAR-10: find the LR, fit, test, report, write the release folder, push it to the Hub."
PUSH = "Push a release folder to the Hub."
EVAL = ("Re-measure a release (folder or Hub id) on a test split and say, line by line, whether it matches what the "
        "release states (its metrics.json and its card's model-index); exit 1 where it does not.")


def parse_train(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, RunConfig]:
    """resnet-cifar-train's parser and the run's checked config (exit 2 with one line on a bad setting)."""
    parser = build_parser(description=TRAIN)
    try:
        return parser, resolve(parser.parse_args(argv))
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
        raise  # parser.error exits; this line is never reached


def push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-cifar-push", description=PUSH)
    parser.add_argument("folder", type=Path)
    parser.add_argument("repo_id", metavar="OWNER/NAME")
    parser.add_argument("--private", action="store_true")
    return parser


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-cifar-eval", description=EVAL)
    parser.add_argument("source", metavar="SOURCE", help="a release folder or a Hub repo id (owner/name)")
    parser.add_argument("--revision", default=None, help="Hub revision of the release")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="Hub dataset id or local folder in its layout "
                                                                   f"(default: {DEFAULT_DATASET})")
    parser.add_argument("--split", default="test", help="the split to measure (default: test)")
    parser.add_argument("--limit", type=int, default=None,
                        help="measure the first N images (default: as many as the release states, else all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measured figures here")
    return parser


def train(argv: list[str] | None = None) -> int:
    """resnet-cifar-train."""
    parser, config = parse_train(argv)
    from . import cli  # torch, Lightning, datasets

    return cli.execute(parser, config)


def push(argv: list[str] | None = None) -> int:
    """resnet-cifar-push."""
    parser = push_parser()
    args = parser.parse_args(argv)
    from . import cli

    return cli.push(parser, args)


def evaluate(argv: list[str] | None = None) -> int:
    """resnet-cifar-eval."""
    parser = eval_parser()
    args = parser.parse_args(argv)
    from . import evaluate as measure

    return measure.run(parser, args)

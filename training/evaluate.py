"""resnet-cifar-eval: re-measure a release (folder or Hub id) on a test split and say, line by line, whether it
matches what the release states (its metrics.json and its card's model-index); exit 1 where it does not."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from resnet_cifar import release
from resnet_cifar.errors import first_line
from resnet_cifar.evaluate import figures, predict_split
from resnet_cifar.hub import NETWORK_ERRORS

from . import commands
from .config import DataConfig
from .data import CIFAR10DataModule, decode_split

# (key in metrics.json, words, tolerance in the figure's own unit). Accuracies may differ by one image (a float
# tie decided otherwise by another batch composition); ECE and NLL by 0.001.
COMPARED = (("test_accuracy", "test accuracy (no TTA)", None), ("test_accuracy_tta", "test accuracy (flip TTA)", None),
            ("ece", "ECE (15 bins)", 1e-3), ("test_loss", "NLL", 1e-3))


def stated_metrics(source: str, revision: str | None) -> dict[str, Any] | None:
    """The release's metrics.json (None when it has none)."""
    try:
        return release.read_json(release.locate(source, release.METRICS_NAME, revision), release.METRICS_NAME)
    except FileNotFoundError:
        return None


def shown(key: str, value: float) -> str:
    """A figure as the lines print it: accuracies and ECE in %, NLL as it is."""
    return f"{value:.4f}" if key == "test_loss" else f"{value * 100:.2f} %"


def compare(measured: dict[str, Any], metrics: dict[str, Any] | None, card: float | None) -> tuple[list[str], bool]:
    """Lines 'figure: measured / stated: match|MISMATCH', and whether everything stated matched."""
    n = measured["test_images"]
    lines, ok = [], True
    if metrics is not None and int(metrics.get("test_images", n)) != n:
        lines.append(f"images: measured {n:,}, metrics.json {int(metrics['test_images']):,}: MISMATCH")
        ok = False
    for key, words, tolerance in COMPARED:
        value = measured[key]
        if metrics is None or metrics.get(key) is None:
            lines.append(f"{words}: {shown(key, value)} (the release states none)")
            continue
        limit = 1.0 / n + 1e-9 if tolerance is None else tolerance
        claim = float(metrics[key])
        good = abs(value - claim) <= limit
        ok &= good
        lines.append(f"{words}: measured {shown(key, value)}, metrics.json {shown(key, claim)}: "
                     f"{'match' if good else 'MISMATCH'}")
    if card is not None:  # the model-index value, a fraction
        value = measured["test_accuracy"]
        good = abs(value - card) <= 1.0 / n + 5e-5  # one image, and the card's rounding to 4 decimals
        ok &= good
        lines.append(f"card (model-index) accuracy: measured {value * 100:.2f} %, card {card * 100:.2f} %: "
                     f"{'match' if good else 'MISMATCH'}")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    """resnet-cifar-eval in this process (the console command is commands.evaluate)."""
    parser = commands.eval_parser()
    return run(parser, parser.parse_args(argv))


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Measure, compare, report: the exit status of resnet-cifar-eval."""
    try:
        loaded = release.read(args.source, revision=args.revision)  # the model, and the card's accuracy
        model, card = loaded.model, loaded.test_accuracy
        metrics = stated_metrics(args.source, args.revision)
        config = DataConfig(dataset=args.dataset, test_split=args.split)
        data = CIFAR10DataModule(config).load()
        if args.split not in data:
            raise ValueError(f"{args.dataset}: no split {args.split!r}; it has splits {list(data.keys())}")
        images, labels = decode_split(data[args.split], config.image_column, config.label_column, model.num_classes,
                                      f"{args.dataset} split {args.split!r}")
    except NETWORK_ERRORS as err:
        print(f"resnet-cifar-eval: error: {first_line(err, 500)}", file=sys.stderr)
        return 2
    stated = None if metrics is None or metrics.get("test_images") is None else int(metrics["test_images"])
    if args.limit is not None and not 1 <= args.limit <= len(labels):
        parser.error(f"--limit must be from 1 to {len(labels):,} (the split's images), got {args.limit}")
    if args.limit is None and stated is not None and stated > len(labels):
        parser.error(f"{args.source} states its figures on {stated:,} images of split {args.split!r} (of "
                     f"{metrics.get('dataset', 'its dataset')}), {args.dataset} has {len(labels):,}: measure on the "
                     f"dataset it was measured on, or pass --limit N (1 to {len(labels):,}) to measure the first N "
                     "without comparing")
    limit = args.limit if args.limit is not None else stated
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    print(f"{args.source}: {len(labels):,} images of {args.dataset} split {args.split!r}"  # before the wait
          + (" (the first ones, as the release states)" if limit is not None and args.limit is None else ""),
          flush=True)
    probs, tta = predict_split(model, images, model.mean, model.std)
    measured = figures(probs, tta, labels, model.class_names)
    for name, value in measured["per_class_accuracy"].items():
        print(f"  {name:<12} {'-' if value is None else f'{value * 100:.2f} %'}")
    compared = stated is None or args.limit is None or args.limit == stated  # else asked for: reported, not judged
    if compared:
        lines, ok = compare(measured, metrics, card)
    else:
        lines, ok = [f"{words}: {shown(key, measured[key])}" for key, words, _ in COMPARED], True
        lines.append(f"not compared: the release states its figures on {stated:,} images, these are {limit:,}")
    for line in lines:
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(measured, indent=2))
    if compared:
        print("every stated figure matches" if ok else "some stated figures do not match what the weights measure")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The one typed home of a run's settings: every hyperparameter is a field here, and nowhere else.

The command line (`resnet-cifar-train --help`), recipe files (`--config recipes/dawnbench-24.yaml`), the
checkpoint's record of its run, `training_config.json` in the release and the card's recipe table are all
generated from these dataclasses. Adding a hyperparameter is adding a field (with its help, its check and its
default) to one of the sections below; using it is then a matter of reading `config.<section>.<name>`.

Why dataclasses rather than LightningCLI: the pipeline is more than `fit` (LR finder, test, report, release,
push), the resolved config must be a plain JSON document that the library and the card read without
Lightning, and checkpoints must be loadable with `torch.load(weights_only=True)`, which plain dicts are.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from resnet_cifar.errors import first_line
from resnet_cifar.checks import short

DEFAULT_DATASET = "uoft-cs/cifar10"
OPTIMIZERS = ("adam", "sgd")


class ConfigError(ValueError):
    """A setting outside what is allowed; the message names the flag and what is allowed."""


def setting(default: Any, help: str, check: Callable[[Any], bool] | None = None, allowed: str = "",
            card: bool = True, default_text: str | None = None) -> Any:
    """A config field: its default, its --help text, a check of its value and the words for what is allowed.

    `card=False` keeps a setting (paths, where to push) out of the release's recipe table.
    """
    return field(default=default, metadata={"help": help, "check": check, "allowed": allowed, "card": card,
                                            "default_text": default_text})


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[Any], bool]:
    """A check for a finite number in a range."""
    def check(value: Any) -> bool:
        if not _number(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below
    return check


def whole_at_least(low: int) -> Callable[[Any], bool]:
    """A check for a whole number >= low."""
    return lambda value: _whole(value) and value >= low


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A check that also lets None through."""
    return lambda value: value is None or check(value)


def _limit(value: Any) -> bool:
    """Lightning's limit_*_batches: a whole number of batches >= 1, or a fraction in (0, 1]."""
    if _whole(value):
        return value >= 1
    return _number(value) and 0 < value <= 1


# The default of --data-on-device and --augment-on-device, settled by resnet-cifar-train (training.cli).
AUTO_INPUT_TEXT = ("auto: on for a run on one CPU (as fast as workers or faster there, and no worker process: "
                   "BENCHMARKS.md), off on GPUs; a resumed run keeps its own")


@dataclass
class DataConfig:
    """Where the images come from and how they are batched."""

    dataset: str = setting(DEFAULT_DATASET, "Hub dataset id or local folder in its layout", card=False)
    revision: str | None = setting(None, "Hub revision of the dataset (branch, tag or commit)", card=False,
                                   default_text="latest")
    image_column: str = setting("img", "column holding the images")
    label_column: str = setting("label", "column holding the class ids")
    train_split: str = setting("train", "split to train on")
    test_split: str = setting("test", "split to test on (never trained on)")
    val_fraction: float = setting(0.0, "part of train held out for validation", between(0, 1, high_open=True),
                                  "a number in [0, 1)")
    batch_size: int | None = setting(None, "images per optimizer step", optional(whole_at_least(1)),
                                     "a whole number >= 1", default_text="512, or fewer on a small training split "
                                     "so that an epoch has 8 steps (at least 16 images)")
    num_workers: int | None = setting(None, "DataLoader workers", optional(whole_at_least(0)),
                                      "a whole number >= 0", card=False, default_text="cores - 1, at most 8")
    data_on_device: bool | None = setting(None, "keep the training split on the training device as one uint8 tensor "
                                            "and shuffle and cut the batches there: no DataLoader workers, no copies "
                                            "per step (needs --augment-on-device; one device)",
                                          default_text=AUTO_INPUT_TEXT)


@dataclass
class AugmentConfig:
    """The training augmentation of the course: reflect-pad and random crop, horizontal flip, one cutout hole."""

    pad: int = setting(4, "reflect padding before the random 32x32 crop (0: no crop)",
                       lambda v: _whole(v) and 0 <= v <= 16, "a whole number from 0 to 16")
    flip_p: float = setting(0.5, "probability of a horizontal flip", between(0, 1), "a number in [0, 1]")
    cutout: int = setting(8, "side of the square cutout hole, filled with the dataset mean",
                          lambda v: _whole(v) and 0 <= v <= 32, "a whole number from 0 to 32")
    cutout_p: float = setting(0.5, "probability of the cutout hole", between(0, 1), "a number in [0, 1]")
    augment_on_device: bool | None = setting(None, "augment whole batches with tensor ops on the training device "
                                                   "instead of per image in DataLoader workers; the same steps, pixel "
                                                   "for pixel", default_text=AUTO_INPUT_TEXT)

    def describe(self) -> str:
        """What the augmentation does, in words, for the card: only the steps that actually run."""
        steps = []
        if self.pad:
            steps.append(f"pad to {32 + 2 * self.pad}x{32 + 2 * self.pad} (reflect) and crop a random 32x32")
        if self.flip_p:
            steps.append(f"horizontal flip (p = {self.flip_p:g})")
        if self.cutout and self.cutout_p:
            steps.append(f"one {self.cutout}x{self.cutout} cutout hole filled with the dataset mean "
                         f"(p = {self.cutout_p:g})")
        where = " (batched on the training device)" if self.augment_on_device and steps else ""
        return ("; ".join(steps) if steps else "none") + where + "; then normalization with the dataset mean and std"


@dataclass
class ModelConfig:
    """The ResNet9 settings a run chooses (class names, mean and std come from the dataset)."""

    dropout: float = setting(0.0, "dropout before the linear head", between(0, 1, high_open=True),
                             "a number in [0, 1)")
    logit_scale: float = setting(1.0, "multiply the logits (0.125 in the DAWNBench ResNet-9)",
                                 between(0, 1000, low_open=True), "a number in (0, 1000]")
    activation: Literal["relu", "celu"] = setting("relu", "the nonlinearity after every batch norm: relu (the course's "
                                                          "ResNet-9) or celu (Page's bag of tricks); saved in "
                                                          "config.json")
    celu_alpha: float = setting(0.3, "CELU's alpha (with --activation celu)", between(0.01, 10), "a number in [0.01, 10]")
    whiten: bool = setting(False, "train the prep convolution as a fixed whitening of the training images' 3x3 "
                                  "patches followed by a learnt 1x1 convolution (Page's bag of tricks); the two fold "
                                  "exactly into the release's one 3x3 prep convolution")
    channels_last: bool = setting(True, "channels-last memory format: faster convolutions on CPU and GPU")
    calibrate: bool = setting(True, "after test, fit a temperature by two-fold cross-fitting on the test split and "
                                    "fold it into logit_scale, so the released probabilities are calibrated (ECE)")
    recalibrate_bn: bool = setting(True, "after fit, recompute BatchNorm statistics in one pass over the training "
                                         "images: exact for the final weights, where running averages of a short "
                                         "run are not")


@dataclass
class OptimConfig:
    """Optimizer and One Cycle schedule; the defaults are the course's (Adam, LR finder, peak at 5/24)."""

    epochs: int = setting(24, "epochs to train", whole_at_least(1), "a whole number >= 1")
    optimizer: Literal["adam", "sgd"] = setting("adam", "Adam, or SGD with Nesterov momentum")
    max_lr: float | None = setting(None, "peak One Cycle learning rate", optional(between(0, 10, low_open=True)),
                                   "a number in (0, 10]", default_text="the LR finder's suggestion")
    lr_find_steps: int = setting(100, "steps of the LR finder's sweep", whole_at_least(10), "a whole number >= 10")
    weight_decay: float = setting(1e-4, "L2 weight decay", between(0, 1), "a number in [0, 1]")
    momentum: float = setting(0.9, "SGD (Nesterov) momentum, constant unless --cycle-momentum",
                              between(0, 1, high_open=True), "a number in [0, 1)")
    cycle_momentum: bool = setting(False, "SGD only: cycle momentum 0.95 -> 0.85 -> 0.95 against the LR "
                                          "(One Cycle's own default; then --momentum is not used)")
    pct_start: float = setting(5 / 24, "fraction of the steps rising to the peak LR",
                               between(0, 1, low_open=True, high_open=True), "a number in (0, 1)",
                               default_text="5/24")
    div_factor: float = setting(100.0, "initial LR = max LR / this", between(1, 1e6), "a number in [1, 1e6]")
    final_div_factor: float = setting(100.0, "final LR = initial LR / this", between(1, 1e6),
                                      "a number in [1, 1e6]")
    label_smoothing: float = setting(0.0, "label smoothing of the training loss", between(0, 1, high_open=True),
                                     "a number in [0, 1)")
    ema_decay: float | None = setting(None, "keep an EMA of the weights (e.g. 0.999) and release it",
                                      optional(between(0, 1, low_open=True, high_open=True)), "a number in (0, 1)",
                                      default_text="no EMA")
    ema_every: int = setting(1, "update the EMA every this many optimizer steps", whole_at_least(1),
                             "a whole number >= 1")
    bias_lr_scale: float = setting(1.0, "multiply the LR of every bias (BatchNorm shifts, the head's bias) by this and "
                                        "divide their weight decay by it (64 in Page's bag of tricks)",
                                   between(0, 1000, low_open=True), "a number in (0, 1000]")
    freeze_bn_scale: bool = setting(False, "keep every BatchNorm scale at its initial 1 (not trained)")


@dataclass
class HardwareConfig:
    """Lightning's own settings for where and how to run."""

    precision: str = setting("auto", "e.g. 32-true, bf16-mixed, 16-mixed; auto: bf16-mixed where the device computes "
                                     "bf16 natively (CPUs with AVX512_BF16 or AMX, bf16 GPUs), else 32-true")
    accelerator: str = setting("auto", "cpu, gpu, auto ...")
    devices: str = setting("auto", "a count, a list or auto", card=False)
    strategy: str = setting("auto", "e.g. ddp", card=False)
    num_nodes: int = setting(1, "machines", whole_at_least(1), "a whole number >= 1", card=False)
    limit_train_batches: float | None = setting(None, "batches per epoch (a count, or a fraction in (0, 1])",
                                                optional(_limit), "a whole number >= 1 or a fraction in (0, 1]",
                                                default_text="all")
    limit_test_batches: float | None = setting(None, "test batches (the card then says how many images)",
                                               optional(_limit), "a whole number >= 1 or a fraction in (0, 1]",
                                               default_text="all")
    compile: bool = setting(False, "torch.compile the training step's forward and backward (the first steps pay "
                                   "for the compilation; evaluation and the release use the plain model)",
                            card=False)


@dataclass
class OutputConfig:
    """Where the run writes, and where the release goes."""

    output_dir: Path = setting(Path("runs/resnet9"), "folder for checkpoints, logs and the release", card=False)
    resume: str | None = setting(None, "a checkpoint path, or 'last' for OUTPUT_DIR/checkpoints/last.ckpt",
                                 card=False, default_text="a new run")
    checkpoint_every: int = setting(1, "epochs between the resumable checkpoints (0: none, and a killed run "
                                       "starts again)", whole_at_least(0), "a whole number >= 0", card=False)
    misclassified: int = setting(100, "mistakes kept in the release", whole_at_least(0), "a whole number >= 0")
    push_to_hub: str | None = setting(None, "OWNER/NAME of the Hub repo to push the release to", card=False,
                                      default_text="no push")
    private: bool = setting(False, "create the Hub repo private", card=False)


@dataclass
class RandomConfig:
    """What seeds every random choice of a run: the initial weights, the order of the images, the augmentation."""

    seed: int = setting(0, "seed of everything random", whole_at_least(0), "a whole number >= 0")


SECTIONS: dict[str, type] = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig,
                             "optim": OptimConfig, "hardware": HardwareConfig, "output": OutputConfig,
                             "random": RandomConfig}


@dataclass
class RunConfig:
    """A whole run: one section per concern."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    random: RandomConfig = field(default_factory=RandomConfig)

    def validate(self) -> RunConfig:
        """Check every setting against its field's rule; ConfigError names the first bad one."""
        for section, _, f in fields(self):
            value = getattr(getattr(self, section), f.name)
            check = f.metadata.get("check")
            if check is not None and not check(value):
                raise ConfigError(f"{flag(f.name)} must be {f.metadata['allowed']}, got {short(value)}")
        if self.optim.cycle_momentum and self.optim.optimizer != "sgd":
            raise ConfigError("--cycle-momentum needs --optimizer sgd (Adam has no momentum to cycle)")
        if self.data.data_on_device and not self.augment.augment_on_device:
            raise ConfigError("--data-on-device needs --augment-on-device: a training split kept on the device is "
                              "augmented there, in whole batches (or drop --data-on-device to augment in workers)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (paths as strings): what checkpoints, the release and the card store."""
        def plain(value: Any) -> Any:
            return str(value) if isinstance(value, Path) else value
        return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()} for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> RunConfig:
        """Build a config from nested sections, refusing unknown sections and keys (typos must not pass); the
        top-level seed of older checkpoints and releases is read as random.seed (see `upgraded`)."""
        data = upgraded(data, source)
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{source}: unknown sections {unknown}; allowed are {', '.join(SECTIONS)}")
        sections = {}
        for name, kind in SECTIONS.items():
            values = data.get(name) or {}
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: section {name!r} must be a mapping, got {short(values)}")
            known = {f.name: f for f in dataclasses.fields(kind)}
            bad = sorted(set(values) - set(known))
            if bad:
                raise ConfigError(f"{source}: unknown keys {bad} in section {name!r}; allowed are {sorted(known)}")
            sections[name] = kind(**{k: _coerce(kind, known[k], v, source) for k, v in values.items()})
        return cls(**sections).validate()

    def card_rows(self) -> list[tuple[str, str]]:
        """(setting, value) rows of the card's recipe table: every setting that shapes the weights."""
        rows = []
        for section, _, f in fields(self):
            if f.metadata.get("card", True):
                rows.append((f"{section}.{f.name}", _shown(getattr(getattr(self, section), f.name))))
        return rows


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def upgraded(data: Any, source: str = "config") -> dict[str, Any]:
    """A saved config in today's layout: runs before 2026-12-03 kept the seed at the top level ({"seed": 3, ...});
    it is random.seed now. Checkpoints and releases of those runs stay readable, and resumable."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source} must be a mapping of sections ({', '.join(SECTIONS)}), got {short(data)}")
    data = dict(data)
    if "seed" in data:
        seed, section = data.pop("seed"), data.get("random")
        if isinstance(section, Mapping) and "seed" in section and section["seed"] != seed:
            raise ConfigError(f"{source}: two seeds, {short(seed)} at the top and {short(section['seed'])} in "
                              "section 'random'; give one, as random.seed")
        data["random"] = {**(section if isinstance(section, Mapping) else {}), "seed": seed}
    return data


def fields(config: RunConfig | None = None) -> list[tuple[str, type, dataclasses.Field]]:
    """(section name, section class, field) for every setting, in declaration order."""
    return [(name, kind, f) for name, kind in SECTIONS.items() for f in dataclasses.fields(kind)]


def flag(name: str) -> str:
    """--flag-name of a field."""
    return "--" + name.replace("_", "-")


def _base_type(owner: type, f: dataclasses.Field) -> tuple[Any, bool]:
    """(the type a field holds, whether None is allowed), from the annotation of `f` in class `owner`."""
    annotation = typing.get_type_hints(owner)[f.name]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def _coerce(owner: type, f: dataclasses.Field, value: Any, source: str) -> Any:
    """A value from a YAML file or the command line, in the field's type (checked later by validate())."""
    kind, nullable = _base_type(owner, f)
    if value is None or (nullable and isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            return value
        if kind is int and isinstance(value, str):
            return int(value)
        if kind is float and isinstance(value, str):
            number = float(value)
            return int(number) if f.name.startswith("limit_") and number.is_integer() and "." not in value else number
        if kind is float and isinstance(value, int) and not isinstance(value, bool) and not f.name.startswith("limit_"):
            return float(value)
        if kind is Path:
            return Path(value)
        if typing.get_origin(kind) is Literal and value not in typing.get_args(kind):
            raise ConfigError(f"{flag(f.name)} must be one of {', '.join(typing.get_args(kind))}, got {short(value)}")
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{source}: {flag(f.name)} must be {f.metadata.get('allowed') or kind.__name__}, "
                          f"got {short(value)}") from None
    return value


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file: YAML with the sections of RunConfig."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path} is not valid YAML: {first_line(err)}") from err
    RunConfig.from_dict(data or {}, f"--config {path}")  # refuse unknown keys and bad values now
    return data or {}


def build_parser(prog: str = "resnet-cifar-train", description: str = "") -> argparse.ArgumentParser:
    """The command line, one flag per setting, grouped by section; each default shown once, in the help."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS,
                        help="a recipe file (sections data, augment, model, optim, hardware, output, random); flags given "
                             "on the command line override it")
    groups = {name: parser.add_argument_group(name, kind.__doc__) for name, kind in SECTIONS.items()}
    defaults = RunConfig()
    for section, kind, f in fields():
        group = groups[section]
        default = getattr(getattr(defaults, section), f.name)
        shown = f.metadata.get("default_text") or _shown(default)
        help_text = f"{f.metadata['help']} (default: {shown})"
        base, _ = _base_type(kind, f)
        if base is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(base) is Literal:
            group.add_argument(flag(f.name), dest=f.name, choices=typing.get_args(base), default=argparse.SUPPRESS,
                               help=help_text)
        else:
            metavar = f.name.upper() if f.name != "push_to_hub" else "OWNER/NAME"
            group.add_argument(flag(f.name), dest=f.name, metavar=metavar, default=argparse.SUPPRESS, help=help_text)
    return parser


def resolve(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the recipe file, then the flags given: the run's config, validated."""
    data = upgraded(load_recipe(args.config) if getattr(args, "config", None) else {}, "--config")
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    given = vars(args)
    for section, kind, f in fields():
        if f.name in given:
            data.setdefault(section, {})[f.name] = _coerce(kind, f, given[f.name], "command line")
    return RunConfig.from_dict(data, "command line")

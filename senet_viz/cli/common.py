"""What the commands share: the user-error type, printing and progress, the option groups (parent parsers, each
option defined once), and reading those options: the model, its blocks, the images, the ranks of a launch.

Nothing here imports torch at import time: `--help` and the commands that read files (``stats``, ``figure``,
``channels``) stay light; the loading functions import what they need when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


class UserError(Exception):
    """An error in what the user asked for: printed without a traceback, exit code 2."""


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def progress(label: str, quiet: bool) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` callback drawing a tqdm bar of images on stderr; None when ``quiet`` (--json,
    another rank) or when stderr is not a terminal. A pass that starts again from 0 (e.g. the full network, then
    the ablated one) gets a new bar."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or done < bar.n:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=label, unit="image", file=sys.stderr, dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            bar = None

    return report


def file_options(args: argparse.Namespace):
    """The model-file options (``--input-size``, ``--resize``, ``--classes``, ``--mean``, ``--std``,
    ``--allow-code``) as ``ModelFileOptions``, or None when none was given."""
    from senet_viz.models.model_files import ModelFileOptions
    from senet_viz.models.preprocess import parse_numbers

    def numbers(value: str | None, flag: str, kind: type = float) -> tuple | None:
        try:
            return parse_numbers(value, flag, kind)
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    size = numbers(getattr(args, "input_size", None), "--input-size", int)
    if size is not None and len(size) != 3:
        raise UserError(f"--input-size takes C,H,W (e.g. 3,224,224), got {args.input_size!r}")
    names = None
    classes_file = getattr(args, "class_file", None)
    if classes_file is not None:
        try:
            names = tuple(line.strip() for line in Path(classes_file).read_text().splitlines() if line.strip())
        except OSError as exc:
            raise UserError(f"cannot read the class names {classes_file}: {exc}") from exc
        if not names:
            raise UserError(f"{classes_file} lists no class name (one per line)")
    options = ModelFileOptions(input_size=size, resize=getattr(args, "resize", None), class_names=names,
                               mean=numbers(getattr(args, "mean", None), "--mean"),
                               std=numbers(getattr(args, "std", None), "--std"),
                               allow_code=bool(getattr(args, "allow_code", False)))
    return None if options == ModelFileOptions() else options


def load_network(args: argparse.Namespace, weights_needed: bool = True):
    """The ``LoadedModel`` of ``--model`` / ``--weights`` / the model-file options, on ``--device``."""
    from senet_viz.models.model_files import is_model_file
    from senet_viz.models.weights import WeightsError
    from senet_viz.models.zoo import load_model

    weights = getattr(args, "weights", None)
    if not weights_needed and weights is None and not is_model_file(args.model):
        weights = "random"  # a zoo network's gates and cost need no weights (a model file carries its own)
    try:
        loaded = load_model(args.model, weights=weights, device=args.device,
                            reduction=getattr(args, "reduction", None), options=file_options(args))
        return loaded.with_outputs(getattr(args, "outputs", None))
    except KeyError as exc:
        raise UserError(str(exc) if type(exc) is not KeyError else exc.args[0]) from exc
    except (WeightsError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def image_set(args: argparse.Namespace, loaded, per_class: bool = True):
    """The images of ``--images``: labelled by ``--labels FILE`` (ImageNet's flat validation layout) or by their
    names / class folders; then ``--per-class K`` (unless the command applies it itself), ``--shard``, ``--limit``."""
    from senet_viz.data.folders import folder_source
    from senet_viz.data.imagenet import labels_file_source, take_per_class

    labels, devkit = getattr(args, "labels", None), getattr(args, "devkit_meta", None)
    if devkit and not labels:
        raise UserError("--devkit-meta goes with --labels ILSVRC2012_validation_ground_truth.txt")
    try:
        if labels:
            images = labels_file_source(args.images, labels, loaded.class_names, loaded.wnids, devkit=devkit)
        else:
            # the local user's own data set: no bounds on the walk (the served app's are folder_source's defaults),
            # and files that are not images are named, so the user sees which ones were left out
            images = folder_source(args.images, class_names=loaded.class_names, wnids=loaded.wnids,
                                   max_entries=None, max_depth=None, max_seconds=None, name_non_images=True)
        if per_class and getattr(args, "per_class", None) is not None:
            images = take_per_class(images, args.per_class)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if getattr(args, "shard", None):
        try:
            i, n = (int(x) for x in args.shard.split("/"))
            images = images.shard(i, n)
        except ValueError as exc:
            raise UserError(f"--shard must be i/n with 0 <= i < n, e.g. 0/4; got {args.shard!r}") from exc
    if getattr(args, "limit", None):
        images.items = images.items[: args.limit]
    if not images.items:
        raise UserError(f"no images found in {args.images}")
    return images


@contextlib.contextmanager
def ranks(args: argparse.Namespace) -> Iterator:
    """The ranks of a torchrun / srun launch (one process: a stand-in whose collectives are the identity).
    ``args.device`` becomes this rank's device. The process group is destroyed when the command ends, also on
    errors; only rank 0 prints, so another rank's error names its rank."""
    from senet_viz.inference.distributed import DistributedError, process_group

    try:
        with process_group(args.device) as group:
            args.device = group.device
            try:
                yield group
            except UserError as exc:
                if group.main:
                    raise
                raise UserError(f"rank {group.rank}: {exc}") from exc
    except DistributedError as exc:
        raise UserError(str(exc)) from exc


def agreed(group, setup: Callable[[], object]):
    """Run ``setup()`` (loading, listing, checking) on every rank and fail together if any rank fails: rank 0
    reports the first failure, the others exit 2 quietly. Without it a rank that failed alone would leave the
    others waiting in the next collective."""
    try:
        value, error = setup(), None
    except UserError as exc:
        value, error = None, str(exc)
    failed = group.first_error(error)
    if failed is not None:
        rank, message = failed
        if not group.main:
            raise SystemExit(2)
        raise UserError(message if rank == 0 else f"rank {rank}: {message}")
    return value


def pick_blocks(loaded, spec: str | None) -> list:
    """The SE blocks of ``spec`` (``SE_5_1,SE_5_2`` | ``stage:5`` | ``last:3``; none when ``spec`` is empty)."""
    from senet_viz.gates.blocks import BlockSelectionError, select_blocks

    try:
        return select_blocks(loaded.blocks, spec)
    except BlockSelectionError as exc:
        raise UserError(str(exc)) from exc


def names_list(text: str | None) -> list[str] | None:
    """A comma-separated option (``--classes``, ``--blocks``) as stripped names; None when not given."""
    return [name.strip() for name in text.split(",")] if text else None


# ------------------------------------------------------------------------------------------------ option groups

IMAGES_HELP = ("folder: ImageNet-style names (n01443537_goldfish.JPEG), class sub-folders (wnid folders: "
               "val/n01440764/*.JPEG), or ImageNet's flat validation folder with --labels")
WEIGHTS_HELP = ("weights file: .safetensors, .pth/.pt (weights_only), .tflite; with --model file.py:build, the "
                "state dict of the module it builds (model files carry their own weights)")
MODEL_HELP = ("a zoo name (`python -m senet_viz models`), any timm or torchvision model (`timm:<name>` / "
              "`torchvision:<name>`; a bare name when only one library has it; timm pretrained tags as in "
              "seresnext101_32x8d.ah_in1k), or your own model: a TorchScript file (.pt/.ts), a torch.export "
              "program (.pt2), an .onnx file, or Python code file.py:build / package.module:build (with --allow-code)")


def parent(*arguments: tuple[tuple[str, ...], dict]) -> argparse.ArgumentParser:
    """A parent parser holding ``arguments`` ((flags, keywords) pairs), for commands that share them."""
    p = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in arguments:
        p.add_argument(*flags, **kwargs)
    return p


def model_parent(classes_flags: tuple[str, ...]) -> argparse.ArgumentParser:
    """--model and the options of a model file (``classes_flags``: the class-names file's flags)."""
    return parent(
        (("--model",), {"required": True, "help": MODEL_HELP}),
        (("--allow-code",), {"action": "store_true",
                             "help": "allow --model file.py:build / package.module:build: it runs that Python code "
                                     "with your permissions (your TorchScript and .pt2 files, which can carry code "
                                     "too, load without it: the CLI trusts your files, the dashboard does not)"}),
        (("--input-size",), {"metavar": "C,H,W", "help": "model file: the input it takes (default: the file's own "
                                                         "shape, else 3,224,224; 1 channel reads images as grey)"}),
        (("--resize",), {"type": int, "help": "model file: short side before the center crop (default H / 0.875)"}),
        (classes_flags, {"dest": "class_file", "type": Path, "metavar": "FILE",
                         "help": "model file: its class names, one per line (default: the file's labels, else "
                                 "class 0..N-1)"}),
        (("--mean",), {"help": "model file: normalisation mean per channel, e.g. 0.485,0.456,0.406 (ImageNet's "
                               "by default; 0.5 for one channel)"}),
        (("--std",), {"help": "model file: normalisation std per channel (ImageNet's by default; 0.5 for one "
                              "channel)"}))


COMMON = parent((("--device",), {"default": "auto", "help": "auto (CUDA if present), cpu or cuda"}),
                (("--json",), {"action": "store_true", "help": "print one JSON document"}))
MODEL = model_parent(("--classes", "--class-names"))
MODEL_PAPER = model_parent(("--class-names",))  # `paper --classes` picks the protocol's classes
WEIGHTS = parent((("--weights",), {"help": WEIGHTS_HELP}))
IMAGES = parent(
    (("--images",), {"required": True, "help": IMAGES_HELP}),
    (("--labels",), {"type": Path, "help": "labels for a flat folder of ILSVRC2012_val_*.JPEG: Kaggle's "
                                           "LOC_val_solution.csv, or the devkit's "
                                           "ILSVRC2012_validation_ground_truth.txt with --devkit-meta"}),
    (("--devkit-meta",), {"type": Path, "help": "with a devkit ground-truth file: the devkit's data/meta.mat (needs "
                                                "scipy) or a map_clsloc.txt, mapping its class ids to wnids"}))
PER_CLASS = parent((("--per-class",), {"type": int, "help": "take the first K images of every class by sorted file "
                                                            "key (the paper used 50); unlabelled images are left "
                                                            "out"}))
PART = parent((("--shard",), {"help": "process part i of n (0-based), e.g. 0/4; the parts combine"}),
              (("--limit",), {"type": int, "help": "use only the first N images"}))
ABLATE_MODE = parent(
    (("--mode",), {"choices": ("identity", "mean"), "default": "identity",
                   "help": "identity: gate = 1 (the paper's removal); mean: gate = its mean over a calibration "
                           "split (20%% of the images, not scored)"}),
    (("--calibrate-on-eval",), {"action": "store_true",
                                "help": "with --mode mean: fit the mean gates on all images and score on them too"}))
FIGURE_SAMPLING = parent((("--seed",), {"type": int, "default": 0}))
PRECISION = parent((("--precision",), {
    "choices": ("auto", "fp32", "bf16", "fp16"), "default": "auto",
    "help": "what the forwards run in: auto (bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on the CPU), "
            "or one of fp32 (exact gates: also without TF32 on a GPU), bf16, fp16; a batch that overflows is redone "
            "in fp32"}))

OUTPUTS = parent((("--outputs",), {
    "choices": ("logits", "probs", "logprobs"), "default": None,
    "help": "what the network returns (default: detected from its graph, e.g. a final Softmax, or from its values): "
            "logits (probabilities by softmax), probs (used as they are) or logprobs; top-k, probabilities and KL "
            "read them so"}))


def add_batch_size(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--batch-size", type=int, default=default)


def add_channel_count(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--channels", type=int, default=50, help=help_text)

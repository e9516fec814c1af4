"""Command line: ``python -m senet_viz <command>``; every command takes --help, --device and --json.

Exit codes: 0 success; 2 a usage or input error (unknown model or block, unreadable weights, no usable image),
with the reason on stderr; 1 an unexpected failure. Images that cannot be read do not fail a run: they are
counted in ``n_skipped`` and listed under ``skipped`` with their reason.

Modules: :mod:`.common` (the shared options, loading and printing) and one module per command group
(:mod:`.models`, :mod:`.run`, :mod:`.stats`, :mod:`.channels`, :mod:`.train`). :data:`COMMANDS` lists the commands;
a command's module is imported, and its options added, only when that command runs (or when the whole parser is
built), so ``--help`` and the commands that read files never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from senet_viz.cli.common import (
    ABLATE_MODE,
    COMMON,
    FIGURE_SAMPLING,
    IMAGES,
    MODEL,
    MODEL_PAPER,
    OUTPUTS,
    PART,
    PER_CLASS,
    PRECISION,
    WEIGHTS,
    UserError,
)

# name: (its one-line help, "module:function" that adds its own options and sets its function, the shared option
# groups it takes). The order is the order of --help.
COMMANDS: dict[str, tuple[str, str, tuple[argparse.ArgumentParser, ...]]] = {
    "models": ("list models, where their weights come from; --all: every timm / torchvision architecture with "
               "channel gates", "senet_viz.cli.models:add_models", ()),
    "blocks": ("list SE blocks: name, module path, stage, channels, parameters", "senet_viz.cli.models:add_blocks",
               (MODEL,)),
    "cost": ("parameters and GMACs per SE block and stage; no weights needed", "senet_viz.cli.models:add_cost",
             (MODEL,)),
    "extract": ("capture every SE gate over a folder of images into Parquet", "senet_viz.cli.run:add_extract",
                (MODEL, WEIGHTS, IMAGES, PER_CLASS, PART, PRECISION, OUTPUTS)),
    "evaluate": ("top-1/top-5 of the network, optionally with SE blocks removed or frozen",
                 "senet_viz.cli.run:add_evaluate", (MODEL, WEIGHTS, IMAGES, PER_CLASS, PART, ABLATE_MODE, PRECISION,
                                                   OUTPUTS)),
    "sweep": ("ablate every SE block, stage and last-k set in each mode; accuracy vs parameters saved",
              "senet_viz.cli.run:add_sweep", (MODEL, WEIGHTS, IMAGES, PER_CLASS, PRECISION, OUTPUTS)),
    "slim": ("export the network without chosen SE blocks (removed, or frozen and folded): safetensors + JSON, "
             "TorchScript, ONNX", "senet_viz.cli.slim:add_slim", (MODEL, WEIGHTS)),
    "latency": ("wall time per image with and without SE blocks (hook-ablated and slim), beside their MAC share and "
                "the paper's timings; no weights needed", "senet_viz.cli.latency:add_latency", (MODEL, WEIGHTS)),
    "train": ("train the embedded SE-ResNet on Fashion-MNIST (weights, metrics, model card)",
              "senet_viz.cli.train:add_train", ()),
    "stats": ("per-class gate statistics and indices from extracted Parquet shards", "senet_viz.cli.stats:add_stats",
              ()),
    "figure": ("draw a figure from saved statistics (.html, or .png/.svg with Chromium)",
               "senet_viz.cli.stats:add_figure", (FIGURE_SAMPLING,)),
    # --per-class: the protocol's own (default 50)
    "paper": ("the paper's Fig. 6/7 protocol on a folder of labelled images, in one call",
              "senet_viz.cli.stats:add_paper", (MODEL_PAPER, WEIGHTS, IMAGES, FIGURE_SAMPLING, PRECISION, OUTPUTS)),
    "channels": ("class selectivity per SE channel and each channel's exemplar images, from extract Parquet shards",
                 "senet_viz.cli.channels:add_channels", ()),
}


def _prog() -> str:
    """How the user started us: the console script ``senet-viz`` or ``python -m senet_viz``."""
    return "senet-viz" if Path(sys.argv[0]).name == "senet-viz" else "python -m senet_viz"


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`. With ``commands``, only those get their options (and their
    modules imported); the others are listed by name and help, which is all the top-level ``--help`` shows."""
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__.split("\n\nModules:")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, target, parents) in COMMANDS.items():
        if commands is not None and name not in commands:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[COMMON, *parents])
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``argv``: its arguments, default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)  # the top-level parser takes no option values
    args = build_parser({chosen} if chosen else ()).parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

"""``python -m senet_viz channels``: class selectivity per SE channel and the exemplar images of channels, from
``extract`` Parquet shards (no network needed).

Writes into ``--out``:

- ``selectivity_by_block.csv``: per block, the distribution of the channels' selectivity and eta2 (median,
  quartiles, mean) and the class sizes; ``selectivity_depth.html``: that distribution against depth, with
  Spearman's rho of the median against block position;
- ``channels_<block>.csv``: every channel of the block: selectivity, preferred class, mu_max, mu_rest, eta2;
- ``top_channels_<block>.csv``: the ``--rows`` most class-specific channels;
- ``exemplars_<block>.csv``: the ``--top`` highest and lowest gates of every channel of the block with the images'
  keys, classes and predictions (streamed by row group: only the top / bottom k per channel are kept);
- ``sheets/<block>_c<channel>.png``: one contact sheet per chosen channel (``--channels``, default the ``--sheets``
  most class-specific of each block): its highest-gate images, then its lowest, each with class and gate. The
  extract stores each image's path relative to the folder ``extract --images`` read: give that folder as
  ``--images`` (keys that are paths from the current folder are found without it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from senet_viz.cli.common import UserError

TILE = 128
CAPTION = 30
PER_ROW = 8


def add_channels(p: argparse.ArgumentParser) -> None:
    """The ``channels`` command's options."""
    p.set_defaults(func=cmd_channels)
    p.add_argument("--excitations", nargs="+", required=True, type=Path, help="one or more extract outputs")
    p.add_argument("--block", action="append",
                   help="SE block(s), e.g. SE_5_2 (repeat or comma-separate; default every block)")
    p.add_argument("--top", type=int, default=16, help="exemplar images per end (highest / lowest gate)")
    p.add_argument("--rows", type=int, default=20, help="rows of the most class-specific channels table")
    p.add_argument("--channels", help="channels for contact sheets, comma-separated (default: --sheets per block)")
    p.add_argument("--sheets", type=int, default=8, help="contact sheets per block: its most class-specific channels")
    p.add_argument("--group-by", choices=("labels", "prediction"), default="labels",
                   help="class of an image: its stored label, or the network's top-1 prediction")
    p.add_argument("--images", type=Path, help="folder of the images the extract read (its keys are relative to it)")
    p.add_argument("--out", required=True, type=Path, help="output folder")


def _blocks(args, known: list[str]) -> list[str]:
    wanted = [b.strip() for spec in (args.block or []) for b in spec.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in known]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; the file holds {known}")
    return wanted or known


def _channel_list(spec: str | None) -> list[int] | None:
    if not spec:
        return None
    try:
        return [int(c) for c in spec.split(",") if c.strip()]
    except ValueError as exc:
        raise ValueError(f"--channels must be comma-separated integers, got {spec!r}") from exc


def _font(size: int):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def _open(folder: Path | None, key: str) -> Image.Image | None:
    from senet_viz.data.decode import ImageDecodeError, decode_image

    for candidate in ([folder / key] if folder is not None else []) + [Path(key)]:
        if candidate.is_file():
            try:
                return decode_image(candidate)
            except (ImageDecodeError, OSError):
                return None
    return None


def contact_sheet(rows: pd.DataFrame, folder: Path | None, title: str) -> tuple[Image.Image, int]:
    """One channel's exemplars (``Exemplars.frame`` rows of one channel) as one image: the highest-gate images,
    then the lowest, ``PER_ROW`` tiles a row, each with its class and gate. Returns (sheet, images not found)."""
    small, big = _font(12), _font(16)
    sections = [(end, rows[rows["end"] == end]) for end in ("highest", "lowest")]
    per_row = min(PER_ROW, max(len(part) for _, part in sections))
    lines = sum(-(-len(part) // per_row) for _, part in sections)
    header, label = 34, 22
    width = per_row * TILE
    sheet = Image.new("RGB", (width, header + 2 * label + lines * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 8), title, fill="black", font=big)
    y, missing = header, 0
    for end, part in sections:
        draw.text((6, y + 4), f"{end} gate", fill="#444444", font=small)
        y += label
        for i, row in enumerate(part.itertuples(index=False)):
            x, top = (i % per_row) * TILE, y + (i // per_row) * (TILE + CAPTION)
            image = _open(folder, str(row.key))
            if image is None:
                missing += 1
                draw.rectangle((x + 2, top + 2, x + TILE - 3, top + TILE - 3), fill="#DDDDDD")
                draw.text((x + 8, top + TILE // 2 - 6), "not found", fill="#666666", font=small)
            else:
                sheet.paste(ImageOps.fit(image, (TILE - 4, TILE - 4)), (x + 2, top + 2))
            name = row.label_name if isinstance(row.label_name, str) and row.label_name else "no label"
            draw.text((x + 3, top + TILE), name[:20], fill="black", font=small)
            draw.text((x + 3, top + TILE + 14), f"s={row.gate:.3f}", fill="#333333", font=small)
        y += -(-len(part) // per_row) * (TILE + CAPTION)
    return sheet, missing


def cmd_channels(args: argparse.Namespace) -> None:
    """Run ``channels`` (see the module doc); raises the CLI's UserError for bad input."""
    from senet_viz.analysis import channels, exemplars
    from senet_viz.analysis.chance import CIRCULAR_NOTE
    from senet_viz.data.store import read_meta
    from senet_viz.plots.channels import selectivity_depth

    if args.top < 1 or args.rows < 1 or args.sheets < 0:
        raise UserError("--top and --rows must be at least 1, --sheets at least 0")
    if args.images is not None and not args.images.is_dir():
        raise UserError(f"--images {args.images} is not a folder")
    try:
        meta = read_meta(args.excitations[0])
        blocks = _blocks(args, [b["name"] for b in meta["blocks"]])
        wanted_channels = _channel_list(args.channels)
        stats = channels.stats_for_extract(args.excitations, blocks, by=args.group_by)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read the excitations: {exc}") from exc
    out = args.out
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    summary = channels.block_summary(stats, blocks)
    trend = channels.depth_trend(summary)
    summary.to_csv(out / "selectivity_by_block.csv", index=False)
    selectivity_depth(summary, trend).write_html(out / "selectivity_depth.html", include_plotlyjs="cdn")
    written, sheets, missing = [], [], 0
    for block in blocks:
        table = channels.channel_table(stats, block)
        table.to_csv(out / f"channels_{block}.csv", index=False)
        channels.most_selective(table, args.rows).to_csv(out / f"top_channels_{block}.csv", index=False)
        try:
            found = exemplars.exemplars_from_extract(args.excitations, block, args.top)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        frame = found.frame(class_names=meta.get("model_class_names"))  # predictions index the model's classes
        frame.to_csv(out / f"exemplars_{block}.csv", index=False)
        written += [f"channels_{block}.csv", f"top_channels_{block}.csv", f"exemplars_{block}.csv"]
        picked = wanted_channels if wanted_channels is not None else \
            channels.most_selective(table, args.sheets)["channel"].tolist()
        bad = [c for c in picked if not 0 <= c < len(table)]
        if bad:
            raise UserError(f"channels {bad} are out of range for {block} (0..{len(table) - 1})")
        for channel in picked:
            row = table.iloc[channel]
            title = (f"{stats.model} {block} channel {channel}: selectivity {row['selectivity']:.3f}, "
                     f"preferred {channels.preferred_text(row['preferred_class'])}")
            sheet, lost = contact_sheet(frame[frame["channel"] == channel], args.images, title)
            path = out / "sheets" / f"{block}_c{channel}.png"
            sheet.save(path)
            sheets.append(str(path))
            missing += lost
    single = bool((summary["class_means_from"] == "single images").all())
    report = {"out": str(out), "model": stats.model, "blocks": blocks, "group_by": args.group_by,
              "n_images": int(found.n_images) if blocks else 0, "tables": written + ["selectivity_by_block.csv"],
              "figure": "selectivity_depth.html", "sheets": sheets, "images_not_found": missing,
              "class_means_from": "single images" if single else "classes",
              "selectivity_median": dict(zip(summary["block"], summary["selectivity_median"].round(4), strict=True)),
              "trend": trend}
    if args.group_by == "prediction":
        report["note"] = CIRCULAR_NOTE
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
        return
    print(f"{stats.model}: {report['n_images']} images, classes by {args.group_by}; wrote {len(written) + 1} tables, "
          f"{len(sheets)} contact sheets and selectivity_depth.html to {out}")
    if args.group_by == "prediction":
        print(f"note: {CIRCULAR_NOTE}")
    if single:
        print("note: every class holds one image, so each class mean is a single image (selectivity then measures "
              "how much one image stands out, not tuning to a class)")
    cols = ["block", "channels", "n_classes", "selectivity_q25", "selectivity_median", "selectivity_q75",
            "eta2_median"]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"Spearman rho of the median against depth: {trend['rho']:.3f} (p = {trend['p_value']:.3g}, "
          f"{trend['n_blocks']} blocks): {trend['verdict']}")
    if trend["left_out"]:
        print(channels.left_out_text(trend))
    if missing:
        print(f"{missing} exemplar image(s) not found: pass --images with the folder the extract read")
    if np.isnan(trend["rho"]):
        print("(too few blocks for a trend)")

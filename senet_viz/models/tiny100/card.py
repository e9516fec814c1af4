"""The model card of ``se_resnet50_tiny100`` (and its retrained variants): ``<model>.md`` rendered from the metrics
``<model>.json`` that training and :mod:`.table13` write, with ``templates/card.md``."""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from senet_viz.models.tiny100 import templates
from senet_viz.models.tiny100.model import ALL_SE_STAGES, EXPANSION


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def render_card(m: dict) -> str:
    """The model card (markdown) of the metrics ``m``."""
    a, r, d = m["architecture"], m["recipe"], m["data"]
    nose = [s for s in ALL_SE_STAGES if s not in a["se_stages"]]
    history = "; ".join(f"epoch {h['epoch']} loss {h['train_loss']:.3f}"
                        + (f" (held-out top-1 {_pct(h['test_top1'])})" if "test_top1" in h else "")
                        for h in m["history"])
    bw, stride = a["base_width"], a["stem_stride"]
    size = d["image_size"] // stride
    if not nose:
        title, twin = "", "."
    elif len(a["se_stages"]) == 1:
        title, twin = f", SE only in stage {a['se_stages'][0]}", ": a Table 13 variant (SE in one stage only)."
    else:
        title = f" without SE in stage{'s' if len(nose) > 1 else ''} {', '.join(map(str, nose))}"
        twin = ". It is the paper's *retrained without SE* counterpart of `se_resnet50_tiny100`."
    card = Template(templates.read("card.md")).substitute(
        model=m["model"], title_suffix=title, twin_note=twin, depths="-".join(map(str, a["depths"])),
        expansion=a.get("expansion", EXPANSION), base_width=bw,
        stage_outputs=", ".join(str(bw * 2 ** i * EXPANSION) for i in range(4)), num_classes=a["num_classes"],
        stem_stride=stride, stage_sizes="/".join(str(max(1, size // 2 ** i)) for i in range(4)),
        reduction=a["reduction"], se_stages=a["se_stages"], se_blocks=", ".join(a["se_blocks"]) or "none",
        params=f"{a['params']:,}", se_params=f"{a['se_params']:,}", se_share=f"{a['se_params'] / a['params']:.2%}",
        mmacs=f"{a['macs'] / 1e6:.1f}", mean=tuple(d["mean"]), std=tuple(d["std"]), weights=m["weights"],
        sha256_prefix=m["weights_sha256"][:16], dataset=d["dataset"], data_source=d["source"],
        train_images=f"{d['train_images']:,}", test_images=f"{d['test_images']:,}", held_out=d["held_out"],
        recipe=r["description"], seed=m["seed"], threads=m["threads"], command=m["command"],
        test_top1=_pct(m["test_top1"]), test_top5=_pct(m["test_top5"]),
        sample_images=m.get("sample_images", "n/a"), sample_top1=_pct(m.get("sample_top1")),
        sample_top5=_pct(m.get("sample_top5")), history=history, train_minutes=f"{m['train_seconds'] / 60:.1f}",
        machine=m["machine"], date=m["date"], torch=m["torch"], python=m["python"], epochs=r["epochs"],
    ).rstrip("\n")
    if m.get("budget"):
        card += "\n\n## Compute budget\n\n" + m["budget"].rstrip("\n")
    if m.get("table13"):
        card += "\n\n" + render_table13(m["table13"])
    if m.get("findings"):
        card += "\n\n## What the network shows\n\n" + m["findings"].rstrip("\n")
    return card + "\n"


def render_table13(t: dict) -> str:
    """The Table 13-style section: retrained variants and post-hoc removal, top-1 / top-5, parameters, MACs."""
    lines = ["## Table 13 in miniature: retrained variants and post-hoc removal", "",
             f"Held-out test set ({t['n_images']:,} images, 50 per class); same recipe and seed for every retrained "
             f"row; post-hoc rows change the trained `{t['base']}` at inference only "
             "(`senet_viz.analysis.ablation.evaluate`). Measured " + t["date"] + ".", "",
             "| network | SE in stages | top-1 | top-5 | parameters | MMACs |", "|---|---|---|---|---|---|"]
    for row in t["rows"]:
        lines.append(f"| {row['label']} | {row['se_stages']} | {_pct(row['top1'])} | {_pct(row.get('top5'))} | "
                     f"{row['params']:,} | {row['macs'] / 1e6:.1f} |")
    if t.get("note"):
        lines += ["", t["note"]]
    return "\n".join(lines)


def write_card(json_path: str | Path) -> Path:
    """Render ``<model>.md`` beside ``<model>.json``; returns the card's path."""
    json_path = Path(json_path)
    card = json_path.with_suffix(".md")
    card.write_text(render_card(json.loads(json_path.read_text())))
    return card

"""The embedded model's card: ``<model>.md`` rendered from the metrics ``<model>.json`` that training and the
post-hoc comparison write. The text lives in ``templates/card.md`` and ``templates/card_comparison.md``
(``string.Template``); this module only computes the values that fill them."""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from senet_viz.models.embedded import templates
from senet_viz.models.embedded.model import ALL_SE_STAGES

_COMPARISON_ROWS = {"se": "SE-ResNet as trained", "posthoc_identity": "post-hoc: stage-5 SE removed (gate = 1)",
                    "posthoc_mean": "post-hoc: stage-5 SE frozen to its mean gate",
                    "retrained_nose5": "retrained without SE in stage 5 (`se_resnet_fmnist_nose5`)"}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _points(v: float) -> str:
    return f"{100 * v:+.2f}"


def render_card(m: dict) -> str:
    """The model card (markdown) of the metrics ``m`` (the JSON written by training / the comparison)."""
    a, r, d = m["architecture"], m["recipe"], m["data"]
    nose = [s for s in ALL_SE_STAGES if s not in a["se_stages"]]
    history = "; ".join(f"epoch {h['epoch']} loss {h['train_loss']:.3f}"
                        + (f" (test {_pct(h['monitor'])})" if "monitor" in h else "") for h in m["history"])
    card = Template(templates.read("card.md")).substitute(
        model=m["model"],
        title_suffix=f" without SE in stage {nose[0]}" if nose else "",
        twin_note=". It is the paper's *retrained without SE* counterpart of `se_resnet_fmnist`." if nose else ".",
        stem_width=a["widths"][0], widths=a["widths"], depths=a["depths"], reduction=a["reduction"],
        se_stages=a["se_stages"], se_blocks=", ".join(a["se_blocks"]) or "none",
        params=f"{a['params']:,}", se_params=f"{a['se_params']:,}", se_share=f"{a['se_params'] / a['params']:.2%}",
        mmacs=f"{a['macs'] / 1e6:.1f}", mean=d["mean"], std=d["std"], weights=m["weights"],
        sha256_prefix=m["weights_sha256"][:16],
        train_images=f"{d['train_images']:,}", test_images=f"{d['test_images']:,}", data_source=d["source"],
        recipe=r["description"], seed=m["seed"], threads=m["threads"], command=m["command"],
        test_top1=_pct(m["test_top1"]), test_errors=m["test_errors"], sample_images=m["sample_images"],
        sample_top1=_pct(m["sample_top1"]),
        sample_se=f"{100 * (m['test_top1'] * (1 - m['test_top1']) / max(m['sample_images'], 1)) ** 0.5:.1f}",
        history=history, train_minutes=f"{m['train_seconds'] / 60:.1f}", machine=m["machine"], date=m["date"],
        torch=m["torch"], python=m["python"],
    ).rstrip("\n")
    if m.get("comparison"):
        card += "\n\n" + _render_comparison(m["comparison"])
    return card + "\n"


def _render_comparison(comp: dict) -> str:
    rows = comp["rows"]
    srcs = [s for s in ("test", "sample") if f"{s}/se" in rows]
    lines = []
    for key, label in _COMPARISON_ROWS.items():
        cells = [_pct(rows[f"{s}/{key}"]["top1"]) for s in srcs]
        agree = rows.get(f"{srcs[0]}/{key}", {}).get("agreement") if key.startswith("posthoc") else None
        lines.append(f"| {label} | {' | '.join(cells)} | {_pct(agree) if agree is not None else '-'} | "
                     f"{rows[f'{srcs[0]}/{key}']['params_after']:,} |")
    mean_note = ""
    if "test/posthoc_mean" in rows:
        pm = rows["test/posthoc_mean"]
        mean_note = (f"\n\nThe mean-gate row is scored on the {pm['n_images']:,} images outside its calibration "
                     f"split; the full network scores {_pct(pm['full_top1'])} on those same images.")
    src = srcs[0]
    full, ident, mean, nose = (rows[f"{src}/{k}"] for k in ("se", "posthoc_identity", "posthoc_mean",
                                                              "retrained_nose5"))
    saved = full["params"] - nose["params_after"]
    return Template(templates.read("card_comparison.md")).substitute(
        ablated=", ".join(comp["ablated"]), date=comp["date"],
        header=" | ".join({"test": "test set top-1", "sample": "sample top-1"}[s] for s in srcs),
        separator="|---|" + "---|" * (len(srcs) + 2), rows="\n".join(lines), mean_note=mean_note,
        reading_source="full test set" if src == "test" else "sample",
        identity_change=_points(ident["top1"] - full["top1"]),
        mean_change=_points(mean["top1"] - mean["full_top1"]),
        retrained_change=_points(nose["top1"] - full["top1"]),
        saved=f"{saved:,}", saved_share=f"{saved / full['params']:.2%}",
    ).rstrip("\n")


def write_card(json_path: str | Path) -> Path:
    """Render ``<model>.md`` beside ``<model>.json``; returns the card's path."""
    json_path = Path(json_path)
    card = json_path.with_suffix(".md")
    card.write_text(render_card(json.loads(json_path.read_text())))
    return card

"""Export: every table as CSV and Parquet, every figure as HTML and PNG, for the current model and images; results
of earlier selections are listed apart, under their model. Every file carries the model, weights and images."""

import html
import io
import re
import tempfile
from pathlib import Path

import streamlit as st

from senet_viz import plots
from ui import exports
from ui.common import need_analysis
from ui.memo import session_memo
from ui.text import plain

st.header("Export")
selection, analysis = need_analysis(bundle_ok=True)  # works from an analysis file too
result = analysis.result
stats = analysis.stats
for name, table in stats.tables().items():  # bounded however many classes (GateStats.tables)
    exports.keep_table(name, table)
exports.keep_table("indices", analysis.indices)
if result is not None:  # an analysis file holds statistics only
    exports.keep_table("predictions", result.predictions(selection.model.class_names))


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def plain_title(fig) -> str:
    """The figure's title as the app shows it: line breaks as separators, no HTML tags."""
    text = fig.layout.title.text or ""
    return re.sub(r"<[^>]+>", "", re.sub(r"<br\s*/?>", " · ", text)).strip()


def tables_section(bucket: dict, tag: str) -> None:
    prov = bucket["provenance"]
    prefix = f"{slugify(prov.model)}_{prov.image_set}"
    for name, frame in bucket["tables"].items():
        stamped = exports.stamped_table(frame, prov)
        cols = st.columns([3, 1, 1])
        cols[0].markdown(f"**{name}** — {len(frame):,} rows × {len(frame.columns)} columns")
        cols[1].download_button("CSV", stamped.to_csv(index=False).encode(), f"{prefix}_{name}.csv", "text/csv",
                                key=f"csv_{tag}_{name}")
        buffer = io.BytesIO()
        stamped.to_parquet(buffer, index=False)
        cols[2].download_button("Parquet", buffer.getvalue(), f"{prefix}_{name}.parquet",
                                "application/octet-stream", key=f"parquet_{tag}_{name}")


PNG_LIMIT = 16  # rendered PNGs this session keeps for download (about 1 MB each), the least recently used dropped


def figures_section(bucket: dict, tag: str) -> None:
    pngs = session_memo("png_cache", PNG_LIMIT)
    prov = bucket["provenance"]
    prefix = f"{slugify(prov.model)}_{prov.image_set}"
    for name, fig in bucket["figures"].items():
        slug = slugify(name)
        cols = st.columns([3, 1, 1])
        cols[0].markdown(f"**{name}**  \n{plain(plain_title(fig), None)}")  # titles name the model
        stamped = plots.stamp(fig, html.escape(prov.text))  # plotly renders tags in text: the names stay text
        cols[1].download_button("HTML", stamped.to_html(include_plotlyjs=True).encode(), f"{prefix}_{slug}.html",
                                "text/html", key=f"html_{tag}_{slug}")
        png_key = ("png", prov.key, name)
        if cols[2].button("PNG", key=f"make_png_{tag}_{slug}",
                          help=f"{plots.EXPORT_WIDTH} × ≥{plots.EXPORT_HEIGHT} px at scale {plots.EXPORT_SCALE}, "
                               "rendered by plotly's kaleido (needs Chromium)"):
            try:
                with st.spinner("Rendering the PNG ..."), tempfile.TemporaryDirectory() as tmp:
                    path = plots.save_figure(stamped, Path(tmp) / f"{slug}.png")
                    pngs.put(png_key, path.read_bytes())
            except RuntimeError as exc:
                st.error(str(exc))
        png = pngs.get(png_key)
        if png:
            cols[2].download_button("Download PNG", png, f"{prefix}_{slug}.png", "image/png",
                                    key=f"dl_png_{tag}_{slug}")


now = exports.current()
st.caption(f"Current selection: {plain(now['provenance'].text, None)}. Every file carries it (tables: the model, "
           "weights and images columns; figures: a line under the plot).")
st.subheader("Tables")
tables_section(now, "now")
st.subheader("Figures")
if not now["figures"]:
    st.info("Figures appear here once a page has drawn them for this model and these images (Compare classes, "
            "Explore, Depth, Remove SE blocks, Attribution, Cost).")
figures_section(now, "now")

older = exports.earlier()
if older:
    st.subheader("Earlier selections")
    st.caption("Made with another model, other weights or other images; kept apart so they are never mixed with "
               "the current ones.")
    for i, bucket in enumerate(older):
        prov = bucket["provenance"]
        with st.expander(f"{plain(prov.model)} — {plain(prov.images)} (set {prov.image_set})"):
            tables_section(bucket, f"old{i}")
            figures_section(bucket, f"old{i}")

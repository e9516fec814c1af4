"""Export: every table as CSV and Parquet, every figure as HTML and PNG."""

import io
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from senet_viz import plots
from ui.common import need_analysis

st.header("Export")
selection, analysis = need_analysis()
result = analysis.result

tables: dict[str, pd.DataFrame] = {
    "channel_stats": analysis.channels.drop(columns=["hist"]),
    "indices": analysis.indices,
    "predictions": pd.DataFrame({"key": result.keys, "name": result.names, "label": result.labels,
                                 "label_name": result.label_names, "pred": result.pred,
                                 "pred_name": [selection.model.class_names[p] for p in result.pred]}),
    **st.session_state.get("tables", {}),
}
st.subheader("Tables")
for name, frame in tables.items():
    cols = st.columns([3, 1, 1])
    cols[0].markdown(f"**{name}** — {len(frame):,} rows × {len(frame.columns)} columns")
    cols[1].download_button("CSV", frame.to_csv(index=False).encode(), f"{selection.model.name}_{name}.csv",
                            "text/csv", key=f"csv_{name}")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    cols[2].download_button("Parquet", buffer.getvalue(), f"{selection.model.name}_{name}.parquet",
                            "application/octet-stream", key=f"parquet_{name}")

st.subheader("Figures")
figures = st.session_state.get("figures", {})
if not figures:
    st.info("Figures appear here once a page has drawn them (Compare classes, Explore, Depth, Remove SE blocks, Cost).")
for name, fig in figures.items():
    cols = st.columns([3, 1, 1])
    cols[0].markdown(f"**{name}** — {fig.layout.title.text or ''}")
    slug = name.lower().replace(" ", "_")
    cols[1].download_button("HTML", fig.to_html(include_plotlyjs=True).encode(), f"{slug}.html", "text/html",
                            key=f"html_{slug}")
    png_key = f"png_{slug}"
    if cols[2].button("PNG", key=f"make_{png_key}", help="rendered by plotly's kaleido (needs Chromium)"):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = plots.save_figure(fig, Path(tmp) / f"{slug}.png")
                st.session_state[png_key] = path.read_bytes()
        except RuntimeError as exc:
            st.error(str(exc))
    if st.session_state.get(png_key):
        cols[2].download_button("Download PNG", st.session_state[png_key], f"{slug}.png", "image/png",
                                key=f"dl_{png_key}")

"""Streamlit-side glue for app.py and pages/ (the library, senet_viz, never imports streamlit)."""

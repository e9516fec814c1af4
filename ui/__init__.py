"""Streamlit-side glue for app.py and app_pages/ (the library, senet_viz, never imports streamlit)."""

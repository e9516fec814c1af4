"""Streamlit-side glue for app.py and views/ (the library, senet_viz, never imports streamlit)."""

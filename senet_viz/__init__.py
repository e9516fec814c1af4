"""senet-viz: look inside Squeeze-and-Excitation channel attention (the library; it never imports streamlit)."""

__version__ = "0.1.0"

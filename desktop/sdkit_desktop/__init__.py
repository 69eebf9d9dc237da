"""sdkit-desktop: a PySide6 window to generate, watch, compare and keep Stable Diffusion images.

app.py (entry point and scripted mode), main_window.py, worker.py (loads and generates in a QThread),
session.py (Qt-free state), preview.py (latent -> RGB), widgets/ (thin views).
"""

"""The embedded local endpoint: llama.cpp's ``llama-server`` with a small model,
started, checked, restarted with fallback flags after a crash, and stopped.

May import: wire (``local check`` streams through it), errors.
"""

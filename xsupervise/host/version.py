"""The version.

The one version source: pyproject.toml reads it (tool.setuptools.dynamic). A literal, not
importlib.metadata, which would add ~40 ms to every `xsupervise run`.
"""

__version__ = "0.1.0"

"""Builds the optional C speedups; everything else is in pyproject.toml.

Without a working C compiler the extension is skipped and the package runs as
pure Python, with the same behaviour (``SCOPED_SESSION_PURE_PYTHON=1`` chooses
that at run time).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "scoped_session._speedups",
            ["scoped_session/_speedups.c"],
            optional=True,
        )
    ]
)

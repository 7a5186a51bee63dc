"""Only the C part of the build; everything else is in pyproject.toml.

harness/shim/p11shim.c is a PKCS#11 module (the fault shim), not a Python extension: it
is built as one only so that `pip install .` / `pip install -e .` compile it with the
system compiler. It does not include Python.h and needs no libpython symbols, so
pkcs11-tool and Barbican's cffi can dlopen it. -z nodelete keeps it mapped while its
statistics thread runs.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "harness.shim._p11shim",
            sources=["harness/shim/p11shim.c"],
            libraries=["dl", "pthread"],
            extra_compile_args=["-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra"],
            extra_link_args=["-Wl,-z,nodelete"],
        )
    ],
)

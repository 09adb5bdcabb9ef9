"""Build hook for the native relay: a C extension that is optional, so the package installs without a compiler."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pgaurora.proxy._relay", sources=["src/pgaurora/proxy/_relay.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
                             optional=True)])

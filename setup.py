"""Build hook for the native relay: a C extension that is optional, so the package installs without a compiler.

Where OpenSSL's headers are found (Debian: libssl-dev), the relay is built with TLS (PGAURORA_TLS) and
carries TLS sessions in its threads too; without them it still builds, and TLS sessions stay in Python.
"""

import os
import shutil
import subprocess

from setuptools import Extension, setup


def _openssl() -> dict:
    """Compile and link flags for OpenSSL, or {} when its headers are missing."""
    if shutil.which("pkg-config"):
        probe = subprocess.run(["pkg-config", "--cflags", "--libs", "openssl"], capture_output=True, text=True)
        if probe.returncode == 0:
            flags = probe.stdout.split()
            return {
                "define_macros": [("PGAURORA_TLS", "1")],
                "include_dirs": [f[2:] for f in flags if f.startswith("-I")],
                "library_dirs": [f[2:] for f in flags if f.startswith("-L")],
                "libraries": [f[2:] for f in flags if f.startswith("-l")] or ["ssl", "crypto"],
            }
    if any(os.path.exists(os.path.join(d, "openssl", "ssl.h")) for d in ("/usr/include", "/usr/local/include")):
        return {"define_macros": [("PGAURORA_TLS", "1")], "libraries": ["ssl", "crypto"]}
    return {}


setup(
    ext_modules=[
        Extension(
            "pgaurora.proxy._relay",
            sources=["src/pgaurora/proxy/_relay.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
            **_openssl(),
        )
    ]
)

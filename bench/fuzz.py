"""Coverage-guided fuzzing (atheris, libFuzzer) of what pgaurora parses from untrusted bytes.

    python bench/fuzz.py TARGET [--runs N] [--grow]

Targets: startup (the client's packets before authentication), framer (the backend message framer and
decoder), config (a config file), admin (the admin API's parameter validation), scram (the proxy's SCRAM
server, a client's two messages), token (a token sent as a password). Each starts from its seed
corpus in tests/fuzz/corpus/TARGET (copied to a scratch directory; --grow adds what the run found to the
seeds instead). A crash, or an input that takes over a second, is saved in tests/fuzz/crashes/TARGET and
the run exits non-zero: turn each one into a regression test (tests/unit/test_fuzz_corpus.py replays
every file there).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FUZZ = HERE.parent / "tests" / "fuzz"
TARGETS = ("startup", "framer", "config", "admin", "scram", "token")


def check_startup(data: bytes) -> None:
    """Feed the startup decoder in pieces; only a ProtocolError (an 08P01-style refusal) may come out."""
    from pgaurora.wire.codec import NEED_DATA, StartupDecoder
    from pgaurora.wire.errors import ProtocolError

    decoder, cut = StartupDecoder(), (data[0] % 16 + 1) if data else 1
    try:
        for start in range(1, len(data), cut):
            decoder.feed(data[start : start + cut])
            while decoder.next_event() is not NEED_DATA:
                pass
    except ProtocolError:
        pass


def check_framer(data: bytes) -> None:
    """Split a backend stream into frames and decode each; only a ProtocolError may come out."""
    from pgaurora.wire.codec import decode_backend
    from pgaurora.wire.errors import ProtocolError
    from pgaurora.wire.framer import Framer

    framer, cut = Framer(max_message=1 << 16), (data[0] % 32 + 1) if data else 1
    try:
        for start in range(1, len(data), cut):
            framer.feed(data[start : start + cut])
            while (frame := framer.next_frame()) is not None:
                decode_backend(frame.type, frame.payload)
    except ProtocolError:
        pass


def check_config(data: bytes) -> None:
    """A config file's text: a Config or one ConfigError, nothing else."""
    from pgaurora.core.config import loads
    from pgaurora.core.errors import ConfigError

    try:
        loads(data.decode("utf-8", errors="replace"))
    except ConfigError:
        pass


def check_admin(data: bytes) -> None:
    """A route, a query string and a body: parameters or Invalid, nothing else."""
    from urllib.parse import parse_qsl

    from pgaurora.service.admin.routes import ROUTES, Invalid, validate

    if not data:
        return
    route = ROUTES[data[0] % len(ROUTES)]
    head, _, body = data[1:].partition(b"\n")
    path_part, _, query = head.decode("utf-8", errors="replace").partition("?")
    path = {"node": path_part} if "{node}" in route.path else {}
    try:
        validate(route, parse_qsl(query, keep_blank_values=True), path, body)
    except Invalid:
        pass


_SECRET = None


def _scram_secret():
    """A real secret for the password "pw" (made once: PBKDF2 is slow on purpose)."""
    global _SECRET
    if _SECRET is None:
        import base64
        import hashlib
        import hmac

        from pgaurora.proxy.scram import Secret

        salted = hashlib.pbkdf2_hmac("sha256", b"pw", b"fuzz-salt", 16)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        stored = base64.b64encode(hashlib.sha256(client_key).digest()).decode()
        salt = base64.b64encode(b"fuzz-salt").decode()
        _SECRET = Secret.parse(f"SCRAM-SHA-256$16:{salt}${stored}:{base64.b64encode(server_key).decode()}")
    return _SECRET


def check_scram(data: bytes) -> None:
    """The proxy's SCRAM server: a client's SASLInitialResponse payload, then its final message (split at the
    first newline). Only ScramFailed or a ProtocolError may come out."""
    from pgaurora.proxy.scram import ScramFailed, ServerExchange
    from pgaurora.wire.errors import ProtocolError
    from pgaurora.wire.frontend import read_sasl_initial

    initial, _, final = data.partition(b"\n")
    try:
        _, first = read_sasl_initial(initial)
        exchange = ServerExchange(_scram_secret())
        exchange.first(first)
        exchange.final(final.decode("utf-8", "replace"))
    except (ScramFailed, ProtocolError):
        pass


_TOKENS = None


def check_token(data: bytes) -> None:
    """A token as a client sends it for its password: claims or TokenRefused, nothing else."""
    global _TOKENS
    from pgaurora.proxy.tokens import TokenRefused, Tokens

    if _TOKENS is None:
        from pgaurora.core.config import TokenKey, TokensConfig

        key = Path(tempfile.mkdtemp(prefix="pgaurora-fuzz-key-")) / "k1"
        key.write_text("fuzz-key-" * 8)
        key.chmod(0o600)
        _TOKENS = Tokens(TokensConfig(keys=(TokenKey(id="k1", file=str(key)),)), "demo")
    try:
        _TOKENS.verify(data.split(b"\0", 1)[0].decode("utf-8", "replace"), "app", "writer")
    except TokenRefused:
        pass


CHECKS = {
    "startup": check_startup,
    "framer": check_framer,
    "config": check_config,
    "admin": check_admin,
    "scram": check_scram,
    "token": check_token,
}


def _fuzz(target: str, runs: int, corpus: Path, crashes: Path) -> None:
    """In this process: instrument pgaurora's parsers, then let libFuzzer drive the target."""
    import atheris

    with atheris.instrument_imports(include=["pgaurora"]):
        import pgaurora.core.config
        import pgaurora.proxy.scram
        import pgaurora.proxy.tokens
        import pgaurora.service.admin.routes
        import pgaurora.wire.codec
        import pgaurora.wire.framer
        import pgaurora.wire.frontend  # noqa: F401  (imported here to be instrumented)
    check = CHECKS[target]
    atheris.Setup(
        [
            sys.argv[0],
            f"-runs={runs}",
            "-timeout=1",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={crashes}/",
            str(corpus),
        ],
        check,
    )
    atheris.Fuzz()


def run(target: str, runs: int, grow: bool = False) -> dict:
    """Fuzz one target in a child process; its figures, and the crashes it saved."""
    seeds, crashes = FUZZ / "corpus" / target, FUZZ / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"pgaurora-fuzz-{target}-") as scratch:
        corpus = seeds if grow else Path(scratch) / "corpus"
        if not grow:
            shutil.copytree(seeds, corpus) if seeds.exists() else corpus.mkdir()
        before = set(crashes.iterdir())
        done = subprocess.run(
            [sys.executable, __file__, target, "--runs", str(runs), "--child", str(corpus), str(crashes)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    found = sorted(str(p) for p in set(crashes.iterdir()) - before)
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", done.stderr, re.M))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", done.stderr)
    return {
        "target": target,
        "returncode": done.returncode,
        "executions": int(stats.get("number_of_executed_units", 0)),
        "exec_per_second": int(stats.get("average_exec_per_sec", 0)),
        "coverage": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "crashes": found,
        "tail": done.stderr[-1500:] if done.returncode else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--grow", action="store_true", help="keep what the run finds in the seed corpus")
    parser.add_argument("--child", nargs=2, metavar=("CORPUS", "CRASHES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _fuzz(args.target, args.runs, Path(args.child[0]), Path(args.child[1]))
        return
    result = run(args.target, args.runs, args.grow)
    print(
        f"{result['target']}: {result['executions']} executions ({result['exec_per_second']}/s), "
        f"coverage {result['coverage']} edges, {result['features']} features, crashes {len(result['crashes'])}"
    )
    for path in result["crashes"]:
        print(f"  crash: {path}")
    if result["returncode"] and not result["crashes"]:
        print(result["tail"], file=sys.stderr)
    sys.exit(1 if result["returncode"] or result["crashes"] else 0)


if __name__ == "__main__":
    main()

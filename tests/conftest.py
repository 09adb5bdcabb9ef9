"""Fixtures shared by every tier."""

# Hypothesis's pytest plugin imports the rest of hypothesis lazily, in its terminal summary, through
# pytest's assertion rewriter; on CPython 3.11.7 that late ast.parse intermittently fails with
# "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905) after runs that use
# asyncio with TLS. Importing it up front takes that parse out of the summary.
import hypothesis  # noqa: F401  (imported for the reason above)

"""`python -m pgaurora`: the same CLI as the pgaurora script, from the running interpreter's environment."""

from .cli.main import main

main()

"""``twistd`` as a script, so it can run under ``python -m cProfile -o FILE bench/run_twistd.py``."""

from twisted.scripts.twistd import run

run()

"""``python -m engine.plugins.evaluate``: the command the benchmark records name.

The evaluation itself is :mod:`engine.evaluate.plugins` (evaluating sits above the
mechanisms). This entry point goes when the CLI split makes it a ``plugmem`` command.
"""
import sys

from engine.evaluate.plugins import main

if __name__ == "__main__":
    sys.exit(main())

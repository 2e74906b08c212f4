"""``python -m engine.cli``: the same as the ``plugmem`` console script."""
import sys

from engine.cli import main

sys.exit(main())

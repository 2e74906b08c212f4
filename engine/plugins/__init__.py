"""Entry points kept for the README's commands: ``python -m engine.plugins.cli`` (the plugin
commands, also registered as ordinary ``plugmem`` commands) and ``python -m
engine.plugins.evaluate``. The mechanism itself lives in ``engine.mechanisms.plugins``; this
package sits in the CLI layer and goes with the CLI split."""

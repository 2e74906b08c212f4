"""Long work as plain functions ``fn(config, progress, should_stop)`` plus a runner that
executes them in a child process (``engine.jobs.runner``).

Nothing heavy is imported here: the runner's child process imports only the module of
the job it runs.
"""

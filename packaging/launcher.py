"""Entry point of the packaged app: QT_API before anything imports superqt, then the app."""
import multiprocessing
import os
import sys

os.environ["QT_API"] = "pyside6"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

if __name__ == "__main__":
    multiprocessing.freeze_support()  # job workers are spawned from this same executable
    if "--self-test" in sys.argv[1:]:
        from app.selftest import main as self_test

        raise SystemExit(self_test([a for a in sys.argv[1:] if a != "--self-test"]))
    from app.__main__ import main

    raise SystemExit(main())

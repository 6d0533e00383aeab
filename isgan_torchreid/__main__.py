"""``python -m isgan_torchreid COMMAND [ARGS]``: the console scripts under one name (see :mod:`.commands`)."""
import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())

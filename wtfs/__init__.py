"""wtfs: Girder data as a read-only local file system, through a bounded private store."""

import sys

# httpx imports its own command-line client when click and rich are installed (they are: the
# wtfs command uses them), and with it pygments: ~7 MiB of every wtfs process, the mount daemon's
# included, for a client nobody runs. A module that is None in sys.modules cannot be imported,
# which httpx takes as "the CLI extra is not installed".
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

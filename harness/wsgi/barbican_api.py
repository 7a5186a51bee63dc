"""Barbican's API WSGI app.

barbican.wsgi.api hard-codes /etc/barbican/barbican-api-paste.ini; we load the paste file
shipped with the package (or the one named by BARBICAN_HARNESS_PASTE_INI) instead, so
nothing is written to /etc. Barbican reads barbican.conf from $HOME/.barbican/ at import.
"""

import os
import sys
from pathlib import Path

sys.argv = sys.argv[:1]

from paste import deploy  # noqa: E402

_paste = os.environ.get("BARBICAN_HARNESS_PASTE_INI") or str(
    Path(sys.prefix) / "etc" / "barbican" / "barbican-api-paste.ini")
application = deploy.loadapp(f"config:{_paste}")

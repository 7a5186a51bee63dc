"""Keystone's public WSGI app. Keystone parses sys.argv with oslo.config, and uWSGI's
arguments would make it exit; its config files come from OS_KEYSTONE_CONFIG_FILES."""

import sys

sys.argv = sys.argv[:1]

from keystone.wsgi.api import application  # noqa: E402,F401

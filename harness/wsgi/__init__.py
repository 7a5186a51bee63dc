"""WSGI entry points for uWSGI.

Neither PyPI package ships a WSGI script any more, so these small modules load the real
applications the way the packaged scripts used to.
"""

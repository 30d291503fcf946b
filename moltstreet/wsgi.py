"""WSGI entry point: the HTTP side of the app without websockets.

Production serves ``moltstreet.asgi:application`` with daphne (HTTP and websockets). This plain WSGI application is
for any WSGI server an operator prefers for the HTTP API and pages alone (the live feeds need ASGI).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moltstreet.settings")

application = get_wsgi_application()

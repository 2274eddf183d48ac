"""srcluster's HTTP API (Flask under gunicorn): ``gunicorn 'api:create_app()'``.

Routes parse and check a request, call one function of :mod:`common`, and shape
the reply; tasks go to the workers by name (this package never imports
``worker``). Importing it does nothing: :func:`create_app` reads the settings,
opens nothing until the first request, and fails at once on a missing token or
Redis URL.
"""

from api.app import create_app
from api.services import Services

__all__ = ["Services", "create_app"]

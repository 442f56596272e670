"""Ray Serve deployment of registered models and its HTTP client.

``mmray serve`` (:func:`mmray.serve.app.start_serve`) hosts every registered
model that holds the serving alias behind one multiplexed deployment;
:class:`MmrayClient` talks to it. See :mod:`mmray.serve.schemas` for the API.
"""

from mmray.serve.client import MmrayClient, ServeError

__all__ = ["MmrayClient", "ServeError"]

"""interest: real-time interest capture for recommender systems.

Installed, the repository's folders are namespaced under this package:
``interest.engine`` (engine/), ``interest.actors`` (actors/), ``interest.tools``
(tools/). Applications import the client: ``from interest.client import Client``.
"""

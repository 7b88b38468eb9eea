"""Caller authentication with bearer JWTs (the ``auth=bearer`` option).

``jwks.py`` keeps the identity provider's signing keys in memory and refreshes them in the
background; ``tokens.py`` verifies a token against those keys, the issuer and the audience;
``middleware.py`` turns that into a 401 for every request outside the public paths. Who may act on
which user is decided in ``api/auth.py``, beside the routes.
"""

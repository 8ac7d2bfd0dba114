"""The HTTP ingress: signed webhooks in, validated, produced to the raw topic.

``tilepipe ingress`` runs it; see :mod:`ingress.app` for the request flow.
"""

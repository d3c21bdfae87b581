"""The operator surface: REST API under ``/api/v1/``, Prometheus ``/metrics`` and the dashboard.

All three are served on one listener of their own (``api.listen``, loopback by default).
"""

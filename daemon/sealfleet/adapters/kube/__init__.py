"""Kubernetes access for the daemon: raw JSON lists and watches, the controller's proxy.

``client`` owns the connection and error translation; ``controller`` speaks to the
sealed-secrets controller through the API server's service proxy.
"""

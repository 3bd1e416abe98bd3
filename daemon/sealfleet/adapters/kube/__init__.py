"""Kubernetes access for the daemon: raw JSON reads and writes, the controller's proxy.

``client`` owns the connection and error translation (``writing`` the details of its
writes); ``controller`` speaks to the sealed-secrets controller through the API server's
service proxy and reads its flags; ``fleet_keys`` writes and relabels the key Secrets
sealfleet manages; ``controller_restart`` restarts the controller and waits until it
serves the expected key (``rollout_status`` decides when a rollout is done).
"""

"""The status pages beyond the overview (``status_page``): one module per page.

``layout`` is their shared shell; ``cluster`` is ``/clusters/{name}``, ``keys`` is
``/keys``, ``jobs`` is ``/jobs``.  Each ``render`` is a pure function of what the
handler read (the cached snapshot, one bounded store query) to HTML bytes.
"""

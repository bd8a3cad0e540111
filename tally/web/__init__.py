"""The web process's own code (`python web.py`): routes, input checks, stats, dashboard.

The worker and the clock never import this package; what all three share stays in `tally/`.
"""

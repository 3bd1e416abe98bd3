"""Pure planners: from what was observed and what the fleet wants, the actions to take.

No I/O here; the executors in ``app/jobs`` fetch, call a planner, and carry out (and
journal) what it returns.
"""

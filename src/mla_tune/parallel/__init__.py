"""Many GPUs, many hosts: the launcher (``scale``: one worker process per GPU) and its workers (``workers``), which
share one study storage through ``coordination``'s claims and heartbeats. Above the study package: a worker runs
the same study loop, with ``workers.Shared`` as its ``study.loop.Coordination``.
"""

"""Coordination between processes, below the study package: claims that let several workers share one study
(``claim``), heartbeats that fail a dead worker's trial (``heartbeat``), one measuring process per GPU
(``gpu_lock``), and Ctrl-C/SIGTERM handled at safe points only (``interrupts``). The multi-GPU launcher and its
workers, which drive the study package, are in ``mla_tune.parallel``. Nothing is imported here: the CLI's listings
stay free of Optuna and numpy.
"""

"""Study storage: opening an Optuna storage from the one string users give (``urls``), the crash-safe journal file
(``journal``), and the only module that names Optuna's private API (``_optuna_compat``). Nothing is imported here:
the CLI's listings stay free of Optuna.
"""

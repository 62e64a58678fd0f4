"""Study storage: opening an Optuna storage from the one string users give (``urls``, ``rdb``) and the crash-safe
journal file (``journal``). Nothing is imported here: the CLI's listings stay free of Optuna. (Optuna's private API
is named in one module below this package, ``mla_tune._optuna_compat``, which coordination uses too.)
"""

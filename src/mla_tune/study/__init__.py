"""Studies: a request becomes Optuna studies (``plan``, ``setup``), each run by the one study loop (``loop``)
through the Optuna glue (``trials``): the objective and its measurements (``objective``, ``measure``), budgets,
progress, samplers and priors, then the paired confirmation against vLLM's default and its verdict (``confirm``,
``verdict``). Nothing is imported here: the CLI's listings stay free of Optuna and numpy.
"""

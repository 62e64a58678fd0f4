"""Seeing results: terminal rendering for the CLI (``render``, ``render_serving``, ``render_diff``), the numbers
behind the pictures and the pictures (``plotdata``, ``plots``), the HTML report (``report``), and plots attached to
studies for optuna-dashboard (``artifacts``). Nothing is imported here: rich and matplotlib load only when used.
"""

"""Results as plain data: summaries of stored studies (``summary``), tuning tables built from them and written or
read as YAML (``table``, ``export``), measured landscapes and their readers (``landscape``, ``landscape_io``), and
the per-shape diff of two tables (``diff``). Nothing is imported here: the CLI's listings stay fast.
"""

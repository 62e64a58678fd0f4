"""``mla-tune bench-serve``: prove a profile on a real ``vllm serve`` with vLLM's own client (``vllm bench serve``).

``plan`` turns a profile and the user's server arguments into the variants (vLLM's default, the profile through
the plugin, the profile's values as global flags), the loads (concurrency, input and output length) and the
crossed-over order of server starts; ``processes`` starts and stops servers and runs the client; ``bench`` runs a
plan and keeps every completed run; ``summary`` turns the runs into each metric's ratio to the default with an
interval over the repeats. Above ``serving`` (profiles, settings), below ``views`` (text, plot).
"""

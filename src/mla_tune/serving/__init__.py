"""From tuning tables to serving: vLLM settings (``settings``, ``flags``), profiles (``profile``, ``deploy``),
re-measurement on the deployment host (``verify``) and the vLLM plugin that applies a profile (``plugin``)."""

from __future__ import annotations

from .deploy import Deployment, GlobalChoice, deploy
from .flags import EntryFlags, ValueCost, table_flags
from .profile import PROFILE_KIND, Match, PerBatchRule, Point, Profile, RunningEngine, load_profile, mismatch
from .settings import ServingSettings, serving_settings

__all__ = ["PROFILE_KIND", "Deployment", "EntryFlags", "GlobalChoice", "Match", "PerBatchRule", "Point", "Profile",
           "RunningEngine", "ServingSettings", "ValueCost", "deploy", "load_profile", "mismatch",
           "serving_settings", "table_flags"]

"""vLLM's facts, one adapter per version family (``_facts``), and the plugin's hooks into a live vLLM (``_patches``).

``adapter_for("0.26.0")`` returns the family's ``Adapter`` (pure data, see ``_facts``); ``installed_adapter()``
reads the installed version from package metadata without importing vLLM. ``runners._vllm_engine`` (the runner's
use of vLLM) and ``_patches`` (the serving plugin's) act on a live vLLM with the names an adapter gives them.
"""

from __future__ import annotations

import re
from importlib import metadata

from ..errors import UsageError
from .v0_20 import ADAPTER as V0_20
from .v0_21 import ADAPTER as V0_21
from .v0_22 import ADAPTER as V0_22
from .v0_26 import ADAPTER as V0_26
from .v0_33 import ADAPTER as V0_33
from ._facts import Adapter, BackendFacts, GlobalSetting, TritonKernelCall, padded_tokens

FAMILIES: tuple[Adapter, ...] = (V0_20, V0_21, V0_22, V0_26, V0_33)


class UnsupportedVllmError(UsageError):
    """A vLLM version no adapter covers."""


def supported_versions(families: tuple[Adapter, ...] = FAMILIES) -> str:
    return ", ".join(f"{a.family}.x" if "-" not in a.family else
                     f"{a.family.split('-')[0]}.x-{a.family.split('-')[1]}.x" for a in families)


def parse_version(version: str) -> tuple[int, int]:
    m = re.match(r"^\s*v?(\d+)\.(\d+)", str(version))
    if not m:
        raise UnsupportedVllmError(f"cannot read vLLM version {version!r}; supported: {supported_versions()}")
    return int(m.group(1)), int(m.group(2))


def family_span(family: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The minors a family name covers: "0.21-0.25" -> ((0, 21), (0, 25)), "0.26" -> ((0, 26), (0, 26))."""
    first, _, last = str(family).partition("-")
    return parse_version(first), parse_version(last or first)


def family_within(inner: str, outer: str) -> bool:
    """Does family ``inner`` lie inside family ``outer``? A profile deployed for "0.21-0.26" (before mla-tune gave
    0.26 a family of its own) still matches an engine of family "0.26"; unreadable names match only themselves."""
    if inner == outer:
        return True
    try:
        (a, b), (c, d) = family_span(inner), family_span(outer)
    except UnsupportedVllmError:
        return False
    return c <= a and b <= d


def adapter_for(version: str) -> Adapter:
    """The family covering ``version`` ("0.26.0", "0.20", "0.33.0rc1"); one line naming the supported ones if none."""
    key = parse_version(version)
    for a in FAMILIES:
        if a.covers(key):
            return a
    raise UnsupportedVllmError(f"vLLM {version} is not supported by this mla-tune; supported: {supported_versions()}")


def recorded_adapter(version: object) -> Adapter:
    """The family of the vLLM a recording, study or table names ("0.20.0"). Files that name none mla-tune can read
    predate its other families: they were made with 0.20."""
    try:
        return adapter_for(str(version))
    except UnsupportedVllmError:
        return V0_20


def family_adapter(family: str) -> Adapter:
    """The adapter of a family a profile names ("0.20", "0.22-0.25"). A range an older mla-tune named before
    splitting it ("0.21-0.26") gets the family of its newest release, whose facts that range stated."""
    last = family_span(family)[1]
    return adapter_for(f"{last[0]}.{last[1]}")


def installed_version() -> str | None:
    """The installed vLLM's version from its package metadata (vLLM is not imported), or None."""
    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return None


def installed_adapter() -> Adapter:
    version = installed_version()
    if version is None:
        raise UnsupportedVllmError("vLLM is not installed here", hint="pip install 'mla-tune[vllm]', or name a "
                                   f"version with --vllm ({supported_versions()})")
    return adapter_for(version)


def default_adapter(version: str | None = None) -> Adapter:
    """The adapter for ``version`` if given, else the installed vLLM's, else the newest GPU-validated family."""
    if version:
        return adapter_for(version)
    if installed_version() is not None:
        return installed_adapter()
    return V0_20


__all__ = ["FAMILIES", "Adapter", "BackendFacts", "GlobalSetting", "TritonKernelCall", "UnsupportedVllmError",
           "adapter_for", "default_adapter", "family_adapter", "family_span", "family_within", "installed_adapter",
           "installed_version", "padded_tokens", "parse_version", "recorded_adapter", "supported_versions"]

"""What a ``bench-serve`` runs, as data: its variants, its loads, the crossed-over order of its server starts, and
the exact ``vllm serve`` and ``vllm bench serve`` command lines. Pure: nothing here starts a process.

Every variant gets the same model, the same engine arguments and a fresh server. They differ only in what the
profile changes: ``default`` is vLLM's own settings, ``profile`` the profile through mla-tune's plugin
(``MLA_TUNE_PROFILE``), ``flags`` the profile's values set once for every batch through vLLM's own flags (what a
user without the plugin would do: the value the profile takes at its largest batch, and its global choices).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import batch_spec
from ..errors import UsageError
from ..knobs import knobs_for
from ..serving.profile import Profile, load_profile
from ..serving.settings import serving_settings
from ..traffic_io import Traffic
from ..vllm_adapters import Adapter, family_adapter

PROFILE_ENV = "MLA_TUNE_PROFILE"
VARIANTS = ("default", "profile", "flags")
HOST = "127.0.0.1"
PLAN_KIND = "mla-tune/bench-serve-plan"
MAX_CONCURRENCY = 4096
MAX_TOKENS = 1 << 20  # input or output tokens of one request
# Server arguments bench-serve sets itself: the user's own would make the variants differ or the client miss them.
_OWNED = {"--port": "give the port with bench-serve's --port", "--model": "give the model with --model",
          "--host": "the servers listen on 127.0.0.1, where the client and the health check reach them",
          "--attention-backend": "every variant runs the profile's backend; bench-serve sets it",
          "--config": "bench-serve cannot see into a config file: give its arguments after --"}
_MERGED = ("--attention-config", "--compilation-config")
# Environment variables that set what a variant sets: inherited, they would reach vLLM's default too.
BACKEND_ENV = ("VLLM_ATTENTION_BACKEND",)
# cudagraph_mode values without full CUDA graphs: a profile measured under full graphs would not run as measured.
_NO_FULL_GRAPHS = ("NONE", "PIECEWISE")


@dataclass(frozen=True)
class Load:
    """One client setting: ``num_prompts`` requests of ``input_len`` random tokens, each generating exactly
    ``output_len`` tokens, at most ``concurrency`` in flight (the decode batch the server runs)."""

    concurrency: int
    input_len: int
    output_len: int
    num_prompts: int
    shapes: tuple[str, ...] = ()  # the traffic shapes it stands for, if it came from a traffic file

    @property
    def label(self) -> str:
        return f"c{self.concurrency}-in{self.input_len}-out{self.output_len}"


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    env: tuple[tuple[str, str], ...] = ()  # set for its server only
    attention_config: tuple[tuple[str, Any], ...] = ()  # merged into --attention-config
    compilation_config: tuple[tuple[str, Any], ...] = ()  # merged into --compilation-config


@dataclass(frozen=True)
class Start:
    """One server start: ``variant`` in ``repeat``, ``index`` its place in the crossed-over order."""

    index: int
    repeat: int
    variant: Variant

    @property
    def label(self) -> str:
        return f"r{self.repeat + 1}-{self.variant.name}"


@dataclass(frozen=True)
class BenchPlan:
    profile: Path
    backend: str
    model: str
    tokenizer: str
    server_args: tuple[str, ...]  # the user's engine arguments, --attention-config / --compilation-config taken out
    attention_config: tuple[tuple[str, Any], ...]  # the user's, with the profile's backend pinned
    compilation_config: tuple[tuple[str, Any], ...]
    variants: tuple[Variant, ...]
    loads: tuple[Load, ...]
    repeats: int
    port: int
    vllm: str  # the vllm executable
    seed: int = 0
    notes: tuple[str, ...] = field(default=())
    profile_sha256: str = ""  # what the profile held when the plan was made: a resume needs the same
    # variables the caller's environment may not pass on: they set what a variant sets (the split count of CUTLASS,
    # the backend), and inherited they would reach vLLM's default too
    stripped_env: tuple[str, ...] = BACKEND_ENV

    @property
    def dummy_weights(self) -> bool:
        """Served with ``--load-format dummy``: random weights, real kernels and shapes (stated in the summary)."""
        args = list(self.server_args)
        return any(a == "--load-format=dummy" or (a == "--load-format" and args[i + 1:i + 2] == ["dummy"])
                   for i, a in enumerate(args))

    @property
    def served_name(self) -> str | None:
        return _value_of(self.server_args, "--served-model-name")

    def starts(self) -> tuple[Start, ...]:
        """The variants in ``repeats`` rounds, every other round reversed (A B C, C B A, ...): a drift of the GPU or
        the host over the session hits every variant alike instead of favouring the one that runs first."""
        out: list[Start] = []
        for r in range(self.repeats):
            for v in self.variants if r % 2 == 0 else tuple(reversed(self.variants)):
                out.append(Start(len(out), r, v))
        return tuple(out)

    def server_command(self, variant: Variant) -> list[str]:
        attention = {**dict(self.attention_config), **dict(variant.attention_config)}
        compilation = {**dict(self.compilation_config), **dict(variant.compilation_config)}
        cmd = [self.vllm, "serve", self.model, "--port", str(self.port), *self.server_args, "--host", HOST]
        if attention:
            cmd += ["--attention-config", json.dumps(attention, sort_keys=True)]
        if compilation:
            cmd += ["--compilation-config", json.dumps(compilation, sort_keys=True)]
        return cmd

    def server_env(self, variant: Variant, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` (the caller's environment) without a profile of its own, plus the variant's variables; vLLM's
        log at INFO, where the plugin says what it applied (the proof that the profile ran)."""
        env = {k: v for k, v in self.client_env(base).items() if k not in (PROFILE_ENV, *self.stripped_env)}
        env.update(dict(variant.env), VLLM_LOGGING_LEVEL="INFO")
        return env

    @staticmethod
    def client_env(base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with the servers' host never sent to an HTTP proxy (the client's requests, the health check)."""
        hosts = ",".join(x for x in (base.get("NO_PROXY") or base.get("no_proxy") or "", HOST, "localhost") if x)
        return {**base, "NO_PROXY": hosts, "no_proxy": hosts}

    def client_command(self, load: Load, result_dir: Path, filename: str) -> list[str]:
        cmd = [self.vllm, "bench", "serve", "--backend", "vllm", "--host", HOST, "--port", str(self.port),
               "--model", self.model, "--tokenizer", self.tokenizer, "--dataset-name", "random",
               "--random-input-len", str(load.input_len), "--random-output-len", str(load.output_len),
               "--random-range-ratio", "0", "--ignore-eos", "--num-prompts", str(load.num_prompts),
               "--max-concurrency", str(load.concurrency), "--request-rate", "inf",
               "--num-warmups", str(load.concurrency), "--seed", str(self.seed),
               "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
               "--save-result", "--result-dir", str(result_dir), "--result-filename", filename, "--disable-tqdm"]
        if self.served_name:
            cmd += ["--served-model-name", self.served_name]
        return cmd

    def to_dict(self) -> dict[str, Any]:
        """What the plan is, as ``plan.json`` keeps it: a rerun into the same folder resumes only the same plan."""
        return {
            "kind": PLAN_KIND, "schema_version": 1, "profile": str(self.profile), "backend": self.backend,
            "profile_sha256": self.profile_sha256,
            "model": self.model, "tokenizer": self.tokenizer, "server_args": list(self.server_args),
            "attention_config": dict(self.attention_config), "compilation_config": dict(self.compilation_config),
            "variants": [{"name": v.name, "description": v.description, "env": dict(v.env),
                          "attention_config": dict(v.attention_config),
                          "compilation_config": dict(v.compilation_config)} for v in self.variants],
            "loads": [{"concurrency": x.concurrency, "input_len": x.input_len, "output_len": x.output_len,
                       "num_prompts": x.num_prompts, "shapes": list(x.shapes)} for x in self.loads],
            "repeats": self.repeats, "port": self.port, "seed": self.seed, "dummy_weights": self.dummy_weights,
        }


def shell(cmd: Sequence[str], env: Mapping[str, str] = ()) -> str:  # type: ignore[assignment]
    """A command line to paste into a shell, with its variables in front."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(dict(env).items())), *map(shlex.quote, cmd)])


# -- building a plan ---------------------------------------------------------------------------------------
def loads_from(concurrencies: Sequence[int], input_len: int, output_len: int, waves: int) -> tuple[Load, ...]:
    """One load per concurrency, ``waves`` x concurrency requests each (at least 32: a run of a few requests is
    dominated by its first and last, which run at a smaller batch)."""
    _check_tokens("--input-len", input_len)
    _check_tokens("--output-len", output_len)
    if waves < 1:
        raise UsageError(f"--waves must be at least 1, got {waves}")
    if not concurrencies:
        raise UsageError("no --concurrency given")
    out = []
    for c in sorted(set(concurrencies)):
        if not 1 <= c <= MAX_CONCURRENCY:
            raise UsageError(f"--concurrency {c} is out of range: 1 to {MAX_CONCURRENCY}")
        out.append(Load(c, input_len, output_len, max(32, waves * c)))
    return tuple(out)


def loads_from_traffic(traffic: Traffic, output_len: int, waves: int) -> tuple[tuple[Load, ...], tuple[str, ...]]:
    """A traffic file's decode batches as loads: a shape's decode requests become the concurrency, and the input
    length is its context less half the output, so that the context decode steps attend over is the shape's on
    average (it grows by one token per step). Shapes the client cannot reproduce are left out or cut, each said in
    a note: a prefill-only batch, multi-token decode (spec decode needs a draft model), a mixed batch's prefills
    (the client's arrivals decide when prefills meet decodes). Shapes that become one load are one load."""
    _check_tokens("--output-len", output_len)
    if waves < 1:
        raise UsageError(f"--waves must be at least 1, got {waves}")
    merged: dict[tuple[int, int], list[str]] = {}
    notes = []
    for spec, _ in traffic.weights:
        requests = batch_spec.parse(spec).requests
        decode = [r for r in requests if r.context_len > 0]
        if not decode:
            notes.append(f"{spec}: no decode request (a prefill-only batch), left out")
            continue
        if any(r.q_len > 1 for r in decode):
            notes.append(f"{spec}: decodes several tokens per step (spec decode, which needs a draft model), left out")
            continue
        if len(decode) < len(requests):
            notes.append(f"{spec}: its prefill part is not served (the client's arrivals decide when prefills meet "
                         "decodes); its decodes are")
        context = max(r.kv_len for r in decode)  # the spec's s: what a decode step attends over
        key = (len(decode), max(1, context - output_len // 2))
        if key[0] > MAX_CONCURRENCY:
            raise UsageError(f"traffic shape {spec} has {key[0]} decode requests: at most {MAX_CONCURRENCY}")
        merged.setdefault(key, []).append(spec)
    if not merged:
        raise UsageError(f"{traffic.source}: no shape the client can serve (single-token decodes)")
    loads = tuple(Load(c, n, output_len, max(32, waves * c), tuple(specs)) for (c, n), specs in sorted(merged.items()))
    notes.append(f"input length = the shape's context less half of --output-len {output_len}: decode contexts then "
                 "average the shape's")
    return loads, tuple(notes)


def _option(token: str) -> tuple[str, str, str]:
    """``--name[.key][=value]`` as vLLM's parser reads it (``_`` in a name is ``-``): (name, key, inline value)."""
    head, eq, inline = token.partition("=")
    if not head.startswith("--"):
        return head, "", inline if eq else ""
    name, _, key = head.partition(".")
    return name.replace("_", "-"), key, inline if eq else ""


def split_server_args(args: Sequence[str], backend: str) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
    """The user's ``vllm serve`` arguments without the two JSON configs bench-serve merges variants into, and those
    configs (the attention config with the profile's backend pinned, so that every variant runs it). Read as vLLM
    reads them: ``--attention_config``, ``--attention-config.backend=X`` and ``-O {...}`` are the same settings."""
    rest: list[str] = []
    configs: dict[str, dict[str, Any]] = {name: {} for name in _MERGED}
    i = 0
    args = list(args)
    while i < len(args):
        a = args[i]
        name, key, inline = _option(a)
        has_inline = "=" in a
        if name == "-O" and (inline or (i + 1 < len(args) and args[i + 1].lstrip().startswith("{"))):
            name = "--compilation-config"  # -O {...} is the compilation config; -O3 a level, left as given
        if name in _OWNED:
            raise UsageError(f"{name} is not a server argument here: {_OWNED[name]}")
        if name in _MERGED:
            value = inline if has_inline else (args[i + 1] if i + 1 < len(args) else None)
            if value is None:
                raise UsageError(f"{name} needs a {'value' if key else 'JSON value'}")
            configs[name].update({key: _json_or_text(value)} if key else _json_object(name, value))
            i += 1 if has_inline else 2
            continue
        if a.startswith("--"):  # as vLLM reads it, so that what bench-serve looks for is found in one spelling
            a = name + (f".{key}" if key else "") + (f"={inline}" if has_inline else "")
        rest.append(a)
        i += 1
    attention = configs["--attention-config"]
    if attention.get("backend", backend) != backend:
        raise UsageError(f"--attention-config asks for backend {attention['backend']}, but the profile is for "
                         f"{backend}: every variant runs the profile's backend")
    attention["backend"] = backend
    return tuple(rest), attention, configs["--compilation-config"]


def _json_object(name: str, value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise UsageError(f"{name} {value!r} is not JSON; write it as '{{\"key\": value}}'") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{name} must be a JSON object, got {value!r}")
    return parsed


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def check_graphs(profile: Profile, args: Sequence[str], compilation: Mapping[str, Any]) -> None:
    """Refuse server arguments that turn off the full CUDA graphs a profile was measured under (its per-batch values
    are chosen per captured graph size; FLASH_ATTN_MLA's split cap exists only there)."""
    if dict(profile.global_).get("cuda_graphs", True) is not True:
        return
    mode = str(compilation.get("cudagraph_mode", "")).upper()
    if "--enforce-eager" in args or mode in _NO_FULL_GRAPHS:
        what = "--enforce-eager" if "--enforce-eager" in args else f"cudagraph_mode {mode}"
        raise UsageError(f"{what} turns off the full CUDA graphs the profile was measured with (cuda_graphs: true)",
                         hint="drop it, or deploy a profile measured without graphs")


def make_variants(names: Sequence[str], profile: Profile, profile_path: Path, adapter: Adapter
                  ) -> tuple[tuple[Variant, ...], tuple[str, ...]]:
    """The variants asked for (``default`` always first: every ratio is to it), and notes on what ``flags`` could
    not set."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    wanted = ["default", *(n for n in VARIANTS[1:] if n in names)]
    if len(wanted) < 2:
        raise UsageError("nothing to compare: give --variant profile and/or flags besides the default")
    out, notes = [], []
    for name in wanted:
        if name == "default":
            out.append(Variant("default", "vLLM's own settings (no profile)"))
        elif name == "profile":
            out.append(profile_variant(profile, profile_path, adapter))
        else:
            variant, why = flags_variant(profile, adapter)
            notes += why
            out.append(variant)
    return tuple(out), tuple(notes)


def profile_variant(profile: Profile, profile_path: Path, adapter: Adapter) -> Variant:
    """The deployment ``deploy`` prints: the plugin with the profile, and the profile's global values as flags."""
    backend = profile.match.backend
    defaults = _defaults(backend)
    settings = serving_settings(backend, dict(profile.global_), defaults, adapter)
    attention = {k: v for k, v in settings.attention_config.items() if k != "backend"}
    changed = [f"{k}={v}" for k, v in profile.global_ if defaults.get(k) != v]
    flags = f", with {', '.join(changed)} as flags" if changed else ""
    return Variant("profile", f"the profile through mla-tune's plugin ({PROFILE_ENV}){flags}",
                   env=tuple(sorted({**settings.env, PROFILE_ENV: str(profile_path.resolve())}.items())),
                   attention_config=tuple(sorted(attention.items())),
                   compilation_config=tuple(sorted(settings.compilation_config.items())))


def _defaults(backend: str) -> dict[str, Any]:
    return {k.name: k.default(backend) for k in knobs_for(backend)}


def flags_variant(profile: Profile, adapter: Adapter) -> tuple[Variant, list[str]]:
    """The profile's values set once for every batch through vLLM's own settings: each per-batch knob at the
    value of its largest measured batch, the global choices as they are. Refused when none has a vLLM setting."""
    backend = profile.match.backend
    values = dict(profile.global_)
    for rule in profile.per_batch:
        top = max(rule.points, key=lambda p: (p.tokens, p.context or 0))
        values[rule.knob] = top.value
    settings = serving_settings(backend, values, _defaults(backend), adapter)
    notes = [f"flags: {x} has no vLLM flag ({adapter.label}): the flags variant runs vLLM's default for it"
             for x in (*settings.plugin_only, *(f"{k}={v}" for k, v in profile.at_build))]
    attention = {k: v for k, v in settings.attention_config.items() if k != "backend"}
    if not attention and not settings.compilation_config and not settings.env:
        raise UsageError(f"the profile sets nothing vLLM has a flag for ({', '.join(sorted(values)) or 'no value'}"
                         f" in {adapter.label}): a flags variant would be vLLM's default",
                         hint="drop --variant flags")
    defaults = _defaults(backend)
    set_ = ", ".join(f"{k}={v}" for k, v in sorted(values.items())
                     if f"{k}={v}" not in settings.plugin_only and defaults.get(k) != v)
    return Variant("flags", f"the profile's values for every batch as vLLM flags ({set_})",
                   env=tuple(sorted(settings.env.items())), attention_config=tuple(sorted(attention.items())),
                   compilation_config=tuple(sorted(settings.compilation_config.items()))), notes


def _value_of(args: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.partition("=")[2]
    return None


def _check_tokens(flag: str, n: int) -> None:
    if not 1 <= n <= MAX_TOKENS:
        raise UsageError(f"{flag} {n} is out of range: 1 to {MAX_TOKENS}")




# -- the whole plan from the command's arguments -----------------------------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_tokenizer(tokenizer: str) -> str | None:
    """Refuse a local model folder without a tokenizer (``vllm bench serve``'s random dataset needs one); a name
    that is no local folder (a hub id) cannot be checked offline: the note says so."""
    path = Path(tokenizer)
    if not path.is_dir():
        if path.exists() or tokenizer.startswith((".", "/")):
            raise UsageError(f"tokenizer {tokenizer} is not a folder")
        return f"tokenizer {tokenizer} is not a local folder: not checked here"
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{tokenizer} has no tokenizer ({', '.join(TOKENIZER_FILES)}): vllm bench serve's random "
                         "dataset needs one", hint="save one into the model folder, or give --tokenizer DIR")
    return None


def make_plan(profile_path: Path, model: str, server_args: Sequence[str], *, tokenizer: str | None = None,
              traffic: Traffic | None = None, input_len: int = 2000, output_len: int = 500,
              concurrency: Sequence[int] = (8, 64, 256), waves: int = 4, repeats: int = 4,
              variants: Sequence[str] = VARIANTS, port: int = 8000, vllm: str = "vllm", seed: int = 0) -> BenchPlan:
    """Check every argument and build the plan; nothing is started."""
    if not 2 <= repeats <= 100:
        raise UsageError(f"--repeats {repeats} is out of range: 2 to 100 (an interval needs two)")
    if not 1024 <= port <= 65535:
        raise UsageError(f"--port {port} is out of range: 1024 to 65535")
    profile_path = Path(profile_path).resolve()
    profile = load_profile(profile_path)
    adapter = family_adapter(profile.match.vllm)
    rest, attention, compilation = split_server_args(server_args, profile.match.backend)
    check_graphs(profile, rest, compilation)
    knob_env = tuple(sorted({g.key for per in adapter.global_settings.values() for g in per.values()
                             if g.section == "env"}))
    notes = []
    if traffic is not None:
        loads, more = loads_from_traffic(traffic, output_len, waves)
        notes += more
    else:
        loads = loads_from(concurrency, input_len, output_len, waves)
    tokenizer = tokenizer or model
    unchecked = check_tokenizer(tokenizer)
    if unchecked:
        notes.append(unchecked)
    chosen, more = make_variants(variants, profile, profile_path, adapter)
    notes += more
    return BenchPlan(profile_path, profile.match.backend, model, tokenizer, rest,
                     tuple(sorted(attention.items())), tuple(sorted(compilation.items())), chosen, loads, repeats,
                     port, vllm, seed, tuple(notes), hashlib.sha256(profile_path.read_bytes()).hexdigest(),
                     (*BACKEND_ENV, *knob_env))


__all__ = ["HOST", "PROFILE_ENV", "VARIANTS", "BenchPlan", "Load", "Start", "Variant", "check_tokenizer",
           "flags_variant", "loads_from", "loads_from_traffic", "make_plan", "make_variants", "profile_variant", "shell",
           "split_server_args"]

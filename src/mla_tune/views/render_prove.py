"""Terminal text and the plot of ``bench-serve``: the dry run's commands, the summary's table of ratios. Pure
(data in, lines or PNG bytes out), but for matplotlib, imported only in ``ratios_png``."""

from __future__ import annotations

from pathlib import Path

from ..prove.plan import BenchPlan, shell
from ..prove.summary import HEADLINE, LEVEL, METRICS, SUSPECT, Summary, comparisons, number
from .text import printable


def dry_run_lines(plan: BenchPlan) -> list[str]:
    """Every server and client command of the plan, in the order they would run, with their variables."""
    starts = plan.starts()
    lines = [f"# bench-serve plan: profile {plan.profile} ({plan.backend}) on {plan.model}"
             f"{' (dummy weights)' if plan.dummy_weights else ''}; {len(plan.variants)} variants x {plan.repeats} "
             f"repeats crossed over = {len(starts)} server starts, {len(starts) * len(plan.loads)} client runs"]
    lines += [f"# variant {v.name}: {v.description}" for v in plan.variants]
    lines += [f"# note: {n}" for n in plan.notes]
    for start in starts:
        v = start.variant
        lines.append(f"# [{start.index + 1}/{len(starts)}] {start.label}")
        lines.append(shell(plan.server_command(v), dict(v.env)))
        for load in plan.loads:
            shapes = f"  # traffic {', '.join(load.shapes)}" if load.shapes else ""
            lines.append("  " + shell(plan.client_command(load, Path("OUT/.run"), "result.json")) + shapes)
    return [printable(x) for x in lines]


def summary_lines(s: Summary) -> list[str]:
    """The ratios to vLLM's default per load: each variant's value, ratio and interval for the headline metrics."""
    p = s.plan
    env = s.environment
    direct = ("profile", "flags") in comparisons(p)
    columns = [(v.name, "default", v.name) for v in p.variants[1:]] + (
        [("profile", "flags", "profile vs flags")] if direct else [])
    out = [f"bench-serve on {env.get('gpu', 'unknown')}, vLLM {env.get('vllm', 'unknown')}: profile {p.profile} "
           f"({p.backend}) on {p.model}{' (dummy weights)' if p.dummy_weights else ''}; vllm bench serve, "
           f"{p.repeats} crossed-over repeats{'' if s.complete else ' (INCOMPLETE: some runs missing)'}",
           f"ratios to vLLM's default, above 1 = better, [interval over the repeats, family-wise {LEVEL:.0%} per metric "
           f"over its {len(comparisons(p)) * len(p.loads)} comparisons]; a gain or loss is claimed only where it "
           "excludes 1, for throughput, TPOT and ITL (p99 ITL and TTFT: shown, not judged)"
           + ("; 'profile vs flags': the profile's ratio to the flags variant" if direct else "")]
    out += [f"  {v.name}: {v.description}" for v in p.variants]
    for load in p.loads:
        out.append("")
        traffic = f" (traffic {', '.join(load.shapes)})" if load.shapes else ""
        out.append(f"concurrency {load.concurrency}, input {load.input_len}, output {load.output_len} tokens, "
                   f"{load.num_prompts} requests{traffic}")
        head = f"  {'metric':<27}{'default':>10}"
        for _, _, title in columns:
            head += f"  {title:<34}"
        out.append(head.rstrip())
        default = s.medians("default", load)
        for m in METRICS:
            if m.key not in default:
                continue
            row = f"  {m.label + ' (' + m.unit + ')':<27}{number(default[m.key]):>10}"
            for variant, baseline, _ in columns:
                r = s.ratio(variant, load, m.key, baseline)
                cell = "-" if r is None else (f"x{r.ratio:.3f}" + (f" [{r.low:.3f}, {r.high:.3f}]" if r.repeats >= 2
                                                                  else "") + f" {_mark(r.verdict)}")
                row += f"  {cell:<34}"
            out.append(row.rstrip())
    undecided = [(r, n) for r in s.ratios if (n := r.repeats_to_decide()) is not None]
    if undecided:
        out += ["", "undecided at this level; at the mean and spread seen, about this many repeats would decide it:"]
        out += [f"  {r.label} {r.metric.label} at concurrency {r.load.concurrency}: x{r.ratio:.3f} "
                f"[{r.low:.3f}, {r.high:.3f}] -> {n} repeats" for r, n in undecided]
    suspects = s.suspects()
    if suspects:
        out += ["", f"suspect runs, more than {SUSPECT:.0%} off their variant's median at their load (a cold server, a "
                "neighbour on the GPU?): look at their logs; they are kept in the ratios above"]
        out += [f"  {x.run.start.label} {x.run.load.label}: {x.metric.label} {number(x.value)} {x.metric.unit}, "
                f"{x.off:+.0%} against the median {number(x.median)}" for x in suspects]
    out += [f"note: {n}" for n in p.notes]
    return [printable(x) for x in out]


def _mark(verdict: str) -> str:
    return {"better": "better", "worse": "WORSE", "same within noise": "=", "shown, not judged": ""}.get(
        verdict, "(1 repeat)")


def ratios_png(s: Summary) -> bytes:
    """Per headline metric, each variant's ratio to the default (with its interval) at each concurrency."""
    from .plots import _png, _pyplot

    plt = _pyplot()
    p = s.plan
    metrics = [m for m in METRICS if m.key in HEADLINE]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False,
                             layout="constrained")
    xs = list(range(len(p.loads)))
    for ax, m in zip(axes[0], metrics):
        for k, v in enumerate(p.variants[1:]):
            shift = (k - (len(p.variants) - 2) / 2) * 0.15
            pts = [(x + shift, s.ratio(v.name, load, m.key)) for x, load in zip(xs, p.loads)]
            pts = [(x, r) for x, r in pts if r is not None]
            if not pts:
                continue
            ys = [r.ratio for _, r in pts]
            err = [[max(0.0, r.ratio - r.low) if r.repeats >= 2 else 0 for _, r in pts],
                   [max(0.0, r.high - r.ratio) if r.repeats >= 2 else 0 for _, r in pts]]
            ax.errorbar([x for x, _ in pts], ys, yerr=err, fmt="o", capsize=4, label=v.name)
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.set_xticks(xs, [f"{x.concurrency}\n{x.input_len}/{x.output_len}" for x in p.loads])
        ax.set_xlabel("concurrency, input/output tokens")
        ax.set_title(f"{m.label}: ratio to default")
        ax.set_ylabel("above 1 = better")
        ax.legend(fontsize="small")
    env = s.environment
    fig.suptitle(f"bench-serve: {p.backend} profile on {env.get('gpu', 'unknown')}, vLLM {env.get('vllm', '?')}, "
                 f"{p.repeats} repeats, family-wise {LEVEL:.0%} intervals"
                 f"{' (dummy weights)' if p.dummy_weights else ''}",
                 fontsize="medium")
    return _png(fig)


def summary_text(s: Summary) -> str:
    return "\n".join(summary_lines(s)) + "\n"


__all__ = ["dry_run_lines", "ratios_png", "summary_lines", "summary_text"]

"""The loss benchmark's figure: forward+backward time and peak memory against 2B, per provider.

One row of two log-log panels per (D, dtype). A case that ran out of memory (or was over the cap)
is drawn as a cross on the top edge of both panels, so the point where the naive loss stops fitting
is visible next to the fused backends that carry on. Rendered with matplotlib's Agg backend (no
display needed); the file is generated, never committed.
"""

from __future__ import annotations

from pathlib import Path

FAILED = ("oom", "over-cap", "timeout")


def plot_cases(cases: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Write the PNG at ``path`` from per-case results; ``None`` if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullLocator
    except ImportError:
        return None
    groups = sorted({(c["d"], c["dtype"]) for c in cases}, key=str)
    providers = list(dict.fromkeys(c["provider"] for c in cases))
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    colors = {p: f"C{i}" for i, p in enumerate(providers)}
    for row, (d, dtype) in enumerate(groups):
        ax_t, ax_m = axes[row]
        sel = [c for c in cases if c["d"] == d and c["dtype"] == dtype]
        for p in providers:
            ok = sorted(
                (c for c in sel if c["provider"] == p and c["status"] == "ok"), key=lambda c: c["n"]
            )
            bad = [c for c in sel if c["provider"] == p and c["status"] in FAILED]
            if ok:
                xs = [c["n"] for c in ok]
                med = [c["fwdbwd_ms"] for c in ok]
                lo = [c["fwdbwd_ms"] - c["fwdbwd_q1"] for c in ok]
                hi = [c["fwdbwd_q3"] - c["fwdbwd_ms"] for c in ok]
                ax_t.errorbar(
                    xs, med, yerr=[lo, hi], marker="o", color=colors[p], label=p, capsize=3
                )
                ax_m.plot(
                    xs, [max(c["peak_mb"], 1e-2) for c in ok], marker="o", color=colors[p], label=p
                )
            for k, c in enumerate(sorted(bad, key=lambda c: c["n"])):
                for ax in (ax_t, ax_m):
                    ax.plot(
                        [c["n"]],
                        [1.0],
                        marker="x",
                        markersize=10,
                        mew=2,
                        color=colors[p],
                        transform=ax.get_xaxis_transform(),
                        clip_on=False,
                        linestyle="none",
                        label=f"{p}: {c['status']} from 2B = {c['n']}"
                        if k == 0 and ax is ax_t
                        else None,
                    )
        for ax, ylabel in (
            (ax_t, "forward+backward time (ms), median, IQR bars"),
            (ax_m, "peak memory beyond inputs (MB)"),
        ):
            ax.set_xscale("log", base=2)
            sizes = sorted({c["n"] for c in sel})
            ax.set_xticks(sizes, [str(x) for x in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
            if any(c["status"] == "ok" for c in sel):
                ax.set_yscale("log")
            ax.set_xlabel("2B (rows of the similarity matrix)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            failed = any(c["status"] in FAILED for c in sel)
            ax.set_title(
                f"D = {d}, {dtype}"
                + (
                    "   (x on the top edge: out of memory / over the cap / timeout)"
                    if failed
                    else ""
                ),
                fontsize=9,
            )
        if ax_t.get_legend_handles_labels()[0]:
            ax_t.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

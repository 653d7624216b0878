"""Plots for the notebooks: each function takes stage outputs and returns a figure."""

from __future__ import annotations

from collections import defaultdict

import matplotlib.pyplot as plt


def plot_index(entries: list[dict], top_terms: int = 20, title: str | None = None):
    """Hours found per search term (the top ones) and the distribution of video durations."""
    hours = defaultdict(float)
    for entry in entries:
        hours[entry.get("query", "?")] += (entry.get("duration_s") or 0) / 3600
    ranked = sorted(hours.items(), key=lambda kv: kv[1], reverse=True)[:top_terms]
    fig, (ax_terms, ax_dur) = plt.subplots(1, 2, figsize=(12, max(3, 0.3 * len(ranked) + 1.5)))
    names = [name for name, _ in ranked][::-1]
    ax_terms.barh(names, [h for _, h in ranked][::-1], color="tab:blue")
    ax_terms.set_xlabel("hours indexed")
    ax_terms.set_title(f"hours per term (top {len(ranked)} of {len(hours)})")
    durations_min = [(e.get("duration_s") or 0) / 60 for e in entries]
    ax_dur.hist(durations_min, bins=min(40, max(5, len(durations_min) // 3)), color="tab:green")
    ax_dur.set_xlabel("duration (minutes)")
    ax_dur.set_ylabel("videos")
    total_h = sum(durations_min) / 60
    ax_dur.set_title(f"{len(entries)} videos, {total_h:.2f} h in all")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

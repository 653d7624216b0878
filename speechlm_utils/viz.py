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


def table(rows: list[dict], columns: list[str] | None = None, max_rows: int = 30):
    """A small HTML table for notebooks (no pandas needed)."""
    from html import escape

    from IPython.display import HTML

    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows[:max_rows]:
        cells = []
        for c in columns:
            value = row.get(c)
            text = f"{value:.2f}" if isinstance(value, float) else ("" if value is None else value)
            cells.append(f"<td>{escape(str(text))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>… {len(rows) - max_rows} more rows</p>" if len(rows) > max_rows else ""
    return HTML(f"<table><tr>{head}</tr>{''.join(body)}</table>{more}")


def plot_scrape(records: list[dict], listings: list[dict]):
    """Chunk durations, and each video's realtime factor (audio seconds per wall second)."""
    durations = [c["end_s"] - c["start_s"] for meta in listings for c in meta["chunks"]]
    ok = [r for r in records if r.get("status") == "ok" and r.get("seconds_taken")]
    fig, (ax_chunks, ax_rtf) = plt.subplots(1, 2, figsize=(12, 3.5))
    ax_chunks.hist(durations, bins=30, color="tab:purple")
    ax_chunks.set_xlabel("chunk duration (s)")
    ax_chunks.set_ylabel("chunks")
    ax_chunks.set_title(f"{len(durations)} chunks: cuts land on packet boundaries")
    names = [r["id"] for r in ok]
    factors = [r["duration_s"] / r["seconds_taken"] for r in ok]
    ax_rtf.bar(range(len(ok)), factors, color="tab:orange")
    ax_rtf.set_xticks(range(len(ok)), names, rotation=30, ha="right", fontsize=8)
    ax_rtf.set_ylabel("audio s per wall s")
    ax_rtf.set_title("realtime factor per video (download + cut)")
    fig.tight_layout()
    return fig

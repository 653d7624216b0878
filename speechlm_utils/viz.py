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


def plot_vocab_layout(layout):
    """The extended vocabulary as one bar: text ids, then each codebook's block, then specials."""
    fig, ax = plt.subplots(figsize=(12, 2.4))
    spans = [("text (base tokenizer)", 0, layout.text_vocab_size, "tab:blue")]
    colors = plt.get_cmap("Oranges")
    for k in range(layout.num_codebooks):
        lo, hi = layout.id_range(k + 1)
        label = "codebook 0 (semantic)" if k == 0 else f"codebook {k} (acoustic)"
        spans.append((label, lo, hi, colors(0.35 + 0.5 * k / max(1, layout.num_codebooks))))
    spans.append(("TEXT_PAD, then unused rows", layout.text_pad_id, layout.padded_vocab_size,
                  "tab:gray"))  # fmt: skip
    for label, lo, hi, color in spans:
        ax.barh(0, hi - lo, left=lo, color=color, edgecolor="white", label=f"{label}: [{lo}, {hi})")
    ax.text(layout.text_vocab_size / 2, 0, "text", ha="center", va="center", color="white")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=3, fontsize=8, frameon=False)
    ax.set_yticks([])
    ax.set_xlim(0, layout.padded_vocab_size)
    ax.set_xlabel("token id")
    ax.set_title(f"vocabulary: {layout.vocab_size} ids in use, "
                 f"{layout.padded_vocab_size} embedding rows (a multiple of 64)")
    fig.tight_layout()
    return fig


def plot_group_layout(layout, groups: int = 2):
    """The first groups of the stream, one cell per token, coloured by kind."""
    import numpy as np

    n = layout.group_len * groups
    kinds = layout.kinds(n)
    fig, ax = plt.subplots(figsize=(min(16, 0.32 * n + 1), 1.9))
    cmap = plt.get_cmap("tab10")
    for pos, kind in enumerate(kinds):
        color = "tab:blue" if kind == 0 else cmap(2 + (kind - 1) % 8)
        ax.add_patch(plt.Rectangle((pos, 0), 0.95, 1, color=color))
        frame = (pos % layout.group_len - layout.text_slots_per_group) // layout.num_codebooks
        label = "T" if kind == 0 else f"f{frame}\nc{kind - 1}"
        ax.text(pos + 0.47, 0.5, label, ha="center", va="center", fontsize=6, color="white")
    for g in range(groups + 1):
        ax.axvline(g * layout.group_len - 0.03, color="black", lw=1.5)
    ax.set_xlim(-0.2, n + 0.2)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks(np.arange(groups) * layout.group_len + layout.group_len / 2,
                  [f"group {g}: {g * layout.group_duration_s:.1f}-"
                   f"{(g + 1) * layout.group_duration_s:.1f} s" for g in range(groups)])
    ax.set_title(f"{layout.text_slots_per_group} text slots (T), then {layout.frames_per_group} "
                 f"frames x {layout.num_codebooks} codebooks: {layout.group_len} tokens per "
                 f"{layout.group_duration_s * 1000:.0f} ms = {layout.tokens_per_s:g} tokens/s")
    fig.tight_layout()
    return fig


def plot_token_stats(records: list[dict]):
    """Per chunk: text slots used and largest spill lag, over the tokenized dataset."""
    ok = [r for r in records if r.get("status") == "ok"]
    fig, (ax_pad, ax_lag) = plt.subplots(1, 2, figsize=(12, 3.2))
    ax_pad.hist([1 - r["pad_share"] for r in ok], bins=20, range=(0, 1), color="tab:blue")
    ax_pad.set_xlabel("share of text slots holding a token")
    ax_pad.set_ylabel("chunks")
    ax_pad.set_title(f"{len(ok)} chunks")
    ax_lag.hist([r["max_lag_s"] for r in ok], bins=20, color="tab:red")
    ax_lag.set_xlabel("largest spill lag in the chunk (s)")
    ax_lag.set_title("how late text had to go when slots were full")
    fig.tight_layout()
    return fig

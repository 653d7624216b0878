"""Plots for the notebooks: each function takes stage outputs and returns a figure."""

from __future__ import annotations

import math
from collections import defaultdict

import matplotlib.pyplot as plt

# One palette for the kinds of token, used by every figure that colours them: text, TEXT_PAD,
# then codebook 0 (semantic), 1, 2, ... (kind k + 1 in `TokenLayout.kinds`), cycled past 8.
KIND_COLORS: dict[str, str] = {
    "text": "tab:blue",
    "pad": "lightgrey",
    "cb0": "tab:green",
    "cb1": "tab:orange",
    "cb2": "tab:red",
    "cb3": "tab:purple",
    "cb4": "tab:brown",
    "cb5": "tab:pink",
    "cb6": "tab:olive",
    "cb7": "tab:cyan",
}


# Words at their sound: a colour no token kind uses, the same in every figure (alternating
# shades where neighbouring words must be told apart).
WORD_COLORS = ("goldenrod", "khaki")


def _integer_counts(*axes) -> None:
    """Count axes tick whole numbers only (no 0.5 videos)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def kind_color(kind: int | str) -> str:
    """A kind's colour in `KIND_COLORS`: a name ("text", "pad", "cb2") or a position kind as
    `TokenLayout.kinds` gives it (0 = text, k + 1 = codebook k)."""
    if isinstance(kind, str):
        return KIND_COLORS[kind]
    if kind == 0:
        return KIND_COLORS["text"]
    n_codebook_colors = sum(name.startswith("cb") for name in KIND_COLORS)
    return KIND_COLORS[f"cb{(kind - 1) % n_codebook_colors}"]


# Colours of the index filter's reasons (`index.filter_reason`, plus malformed items).
REJECT_COLORS: dict[str, str] = {
    "too_short": "tab:orange",
    "too_long": "tab:red",
    "excluded_word": "tab:purple",
    "short": "tab:pink",
    "live": "tab:brown",
    "upcoming": "tab:gray",
    "no_duration": "tab:olive",
    "malformed": "black",
}


def plot_index(entries: list[dict], top_terms: int = 20, title: str | None = None,
               rejected: list[dict] | None = None,
               bounds_s: tuple[float, float] | None = None):  # fmt: skip
    """Hours found per search term (the top ones) and the durations of the videos kept; with
    ``rejected`` (`index.load_rejected`) also the rejected ones, stacked by reason on the same
    log-scale bins, and a bar per reason; ``bounds_s`` marks the duration filter's limits."""
    import numpy as np

    hours = defaultdict(float)
    for entry in entries:
        hours[entry.get("query", "?")] += (entry.get("duration_s") or 0) / 3600
    ranked = sorted(hours.items(), key=lambda kv: kv[1], reverse=True)[:top_terms]
    panels = 2 if rejected is None else 3
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, max(3.5, 0.3 * len(ranked) + 1.5)))
    ax_terms, ax_dur = axes[0], axes[1]
    names = [name for name, _ in ranked][::-1]
    ax_terms.barh(names, [h for _, h in ranked][::-1], color="tab:blue")
    ax_terms.set_xlabel("hours indexed")
    ax_terms.set_title(f"hours per term (top {len(ranked)} of {len(hours)})")
    kept_min = [e["duration_s"] / 60 for e in entries if e.get("duration_s")]
    by_reason: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for r in rejected or []:
        counts[r["reason"]] += 1
        if r.get("duration_s"):
            by_reason[r["reason"]].append(r["duration_s"] / 60)
    every = kept_min + [d for ds in by_reason.values() for d in ds]
    if every:
        lo, hi = min(every), max(every)
        bins = np.geomspace(lo * 0.95, hi * 1.05, min(40, max(6, len(every) // 4)) + 1)
        stacks = [kept_min, *by_reason.values()]
        labels = [f"kept ({len(kept_min)})"] + [f"{k} ({len(v)})" for k, v in by_reason.items()]
        colors = ["tab:green"] + [REJECT_COLORS.get(k, "tab:cyan") for k in by_reason]
        ax_dur.hist(stacks, bins=bins, stacked=True, color=colors, label=labels)
        ax_dur.set_xscale("log")
    for bound_s, name in zip(bounds_s or (), ("min", "max")):
        ax_dur.axvline(bound_s / 60, color="black", ls="--", lw=1)
        label = (f"{bound_s:g} s" if bound_s < 60 else f"{bound_s / 60:g} min"
                 if bound_s < 3600 else f"{bound_s / 3600:g} h")  # fmt: skip
        ax_dur.annotate(f"{name} {label}", (bound_s / 60, 1),
                        xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                        fontsize=8)  # fmt: skip
    ax_dur.set_xlabel("duration (minutes, log scale)")
    ax_dur.set_ylabel("videos")
    _integer_counts(ax_dur)
    total_h = sum(kept_min) / 60
    ax_dur.set_title(f"{len(entries)} videos kept, {total_h:.2f} h in all")
    if rejected is not None:
        ax_rej = axes[2]
        reasons = sorted(counts, key=counts.get)
        bars = ax_rej.barh(reasons, [counts[k] for k in reasons],
                           color=[REJECT_COLORS.get(k, "tab:cyan") for k in reasons])  # fmt: skip
        ax_rej.bar_label(bars, [f"{counts[k]}" + ("" if by_reason.get(k) else " (no duration)")
                                for k in reasons], fontsize=8, padding=2)  # fmt: skip
        ax_rej.set_xlabel("videos rejected")
        ax_rej.set_title(f"{len(rejected)} rejected, by reason" if rejected else "none rejected")
        ax_rej.margins(x=0.3)
        if rejected:  # the histogram's key, where the short bars leave room
            ax_rej.legend(*ax_dur.get_legend_handles_labels(), title="histogram", fontsize=8,
                          loc="lower right")  # fmt: skip
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_requests(arrivals_s: dict[str, list[float]], limit_per_s: float | None = None):
    """Requests a server received over time, one curve per run (name -> arrival times in
    seconds); ``limit_per_s`` draws the line a rate limit holds them under."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    longest_s = 0.0
    for name, times in arrivals_s.items():
        times = sorted(t - min(times) for t in times)
        ax.step(times, range(1, len(times) + 1), where="post", label=f"{name}: {len(times)} "
                f"requests in {times[-1]:.1f} s")  # fmt: skip
        longest_s = max(longest_s, times[-1])
    if limit_per_s:
        ax.plot([0, longest_s], [1, 1 + limit_per_s * longest_s], "k--", lw=1,
                label=f"the limit: {limit_per_s:g} requests/s")  # fmt: skip
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("requests received")
    ax.set_title("requests the server saw")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _number(value: float) -> str:
    """Two decimals where they read well, three significant digits for the very large or
    small (a perplexity of 2e+07, a loss of 0.0007), never a row of digits or a false 0.00."""
    if value == 0 or not math.isfinite(value) or 0.01 <= abs(value) < 1e5:
        return f"{value:.2f}"
    return f"{value:.3g}"


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
            text = _number(value) if isinstance(value, float) else ("" if value is None else value)
            cells.append(f"<td>{escape(str(text))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>… {len(rows) - max_rows} more rows</p>" if len(rows) > max_rows else ""
    return HTML(f"<table><tr>{head}</tr>{''.join(body)}</table>{more}")


def plot_scrape(records: list[dict], listings: list[dict], max_cuts: int = 12):
    """Where the first ``max_cuts`` cuts landed (each chunk's real start against its requested
    ``k * chunk_s``, on the source's packet grid; rows from `scrape.cut_rows`), and each
    video's realtime factor (audio seconds per wall second of its download and cut)."""
    import numpy as np

    from .scrape import cut_rows

    cuts = cut_rows(listings)[:max_cuts]
    ok = [r for r in records if r.get("status") == "ok" and r.get("seconds_taken")]
    fig, (ax_cuts, ax_rtf) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.4 * len(cuts) + 1.5)))
    span_ms = 1.6 * max([c["packet_ms"] or 0 for c in cuts] + [abs(c["offset_ms"]) for c in cuts]
                        + [20.0])  # fmt: skip
    for row, cut in enumerate(cuts):
        if cut["packet_ms"]:  # packet edges: multiples of the packet length from the start
            first = np.ceil((cut["requested_s"] * 1000 - span_ms) / cut["packet_ms"])
            edges = np.arange(first, first + 2 * span_ms / cut["packet_ms"] + 1) * cut["packet_ms"]
            ax_cuts.vlines(edges - cut["requested_s"] * 1000, row - 0.35, row + 0.35,
                           color="grey", lw=1, label="packet edges" if row == 0 else None)
        ax_cuts.plot(cut["offset_ms"], row, "o", color="tab:purple",
                     label="where the chunk starts" if row == 0 else None)  # fmt: skip
    ax_cuts.axvline(0, color="black", ls="--", lw=1, label="requested cut (k × chunk_s)")
    ax_cuts.set_yticks(range(len(cuts)), [f"{c['video']} ({c['codec']}) @ {c['requested_s']:g} s"
                                          for c in cuts], fontsize=8)  # fmt: skip
    ax_cuts.set_xlim(-span_ms, span_ms)
    ax_cuts.set_ylim(len(cuts) - 0.5, -0.5 - 0.8)
    ax_cuts.set_xlabel("chunk start − requested cut (ms)")
    ax_cuts.set_title(f"{len(cuts)} cuts: each moves to a packet edge near its mark")
    ax_cuts.legend(fontsize=7, loc="upper right", ncol=3)
    names = [r["id"] for r in ok]
    factors = [r["duration_s"] / r["seconds_taken"] for r in ok]
    ax_rtf.bar(range(len(ok)), factors, color="tab:orange")
    ax_rtf.set_xticks(range(len(ok)), names, rotation=30, ha="right", fontsize=8)
    ax_rtf.set_ylabel("audio s per wall s")
    filtered = any("speech_ratio" in c for meta in listings for c in meta["chunks"])
    ax_rtf.set_title("realtime factor per video (download + cut"
                     + (" + speech filter)" if filtered else ")"))  # fmt: skip
    fig.tight_layout()
    return fig


def plot_vocab_layout(layout):
    """The extended vocabulary as one bar: text ids, then each codebook's block, then specials."""
    # constrained layout keeps the legend below the x-label instead of over it
    fig, ax = plt.subplots(figsize=(12, 2.6), layout="constrained")
    spans = [("text (base tokenizer)", 0, layout.text_vocab_size, kind_color("text"))]
    for k in range(layout.num_codebooks):
        lo, hi = layout.id_range(k + 1)
        label = "codebook 0 (semantic)" if k == 0 else f"codebook {k} (acoustic)"
        spans.append((label, lo, hi, kind_color(k + 1)))
    spans.append(("TEXT_PAD, then unused rows", layout.text_pad_id, layout.padded_vocab_size,
                  kind_color("pad")))  # fmt: skip
    for label, lo, hi, color in spans:
        ax.barh(0, hi - lo, left=lo, color=color, edgecolor="white", label=f"{label}: [{lo}, {hi})")
    ax.text(layout.text_vocab_size / 2, 0, "text", ha="center", va="center", color="white")
    fig.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    ax.set_yticks([])
    ax.set_xlim(0, layout.padded_vocab_size)
    ax.set_xlabel("token id")
    ax.set_title(f"vocabulary: {layout.vocab_size} ids in use, "
                 f"{layout.padded_vocab_size} embedding rows (a multiple of 64)")
    return fig


def plot_group_layout(layout, groups: int = 2):
    """The first groups of the stream, one cell per token, coloured by kind (the duplex
    layout's user codebooks hatched, labelled u0, u1, ...)."""
    import numpy as np

    n = layout.group_len * groups
    kinds = layout.kinds(n)
    K = layout.num_codebooks
    # narrow enough that a notebook shows it near full size, so the cell labels stay readable
    fig, ax = plt.subplots(figsize=(min(14 if groups * layout.group_len < 60 else 16,
                                        0.28 * n + 1), 2.3))  # fmt: skip
    for pos, kind in enumerate(kinds):
        user = layout.is_user_kind(int(kind))
        color = kind_color(int(kind) - K if user else int(kind))
        ax.add_patch(plt.Rectangle((pos, 0), 0.95, 1, facecolor=color, alpha=0.55 if user else 1,
                                   hatch="//" if user else None, edgecolor="white", lw=0))
        frame = (pos % layout.group_len - layout.text_slots_per_group) // layout.frame_len
        label = "T" if kind == 0 else (f"f{frame}\nu{kind - 1 - K}" if user else
                                       f"f{frame}\nc{kind - 1}")  # fmt: skip
        ax.text(pos + 0.47, 0.5, label, ha="center", va="center", fontsize=9, color="white",
                fontweight="bold")  # fmt: skip
    for g in range(groups + 1):
        ax.axvline(g * layout.group_len - 0.03, color="black", lw=1.5)
    ax.set_xlim(-0.2, n + 0.2)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks(np.arange(groups) * layout.group_len + layout.group_len / 2,
                  [f"group {g}: {g * layout.group_duration_s:.1f}-"
                   f"{(g + 1) * layout.group_duration_s:.1f} s" for g in range(groups)],
                  fontsize=11)  # fmt: skip
    per_frame = (f"({K} of the assistant (c) + {layout.user_codebooks} of the user (u))"
                 if layout.duplex else f"x {K} codebooks (c)")  # fmt: skip
    ax.set_title(f"{layout.text_slots_per_group} text slots (T), then {layout.frames_per_group} "
                 f"frames (f) {per_frame}: {layout.group_len} tokens "
                 f"per {layout.group_duration_s * 1000:.0f} ms = {layout.tokens_per_s:g} tokens/s",
                 fontsize=11)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_rvq_residuals(res, kept: int | None = None, note: str = ""):
    """What Mimi's quantizer leaves against the number of codebooks K (`codec.rvq_residuals`):
    the acoustic RVQ's own residual and the latent's, one point per K; ``kept`` marks the K
    the tokens use, ``note`` goes under the title (e.g. that the weights are random)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.plot(res.codebooks, res.acoustic, "o-", color=kind_color(2),
            label="acoustic RVQ: what codebooks 1..K-1 leave of their input")  # fmt: skip
    ax.plot(res.codebooks, res.latent, "s--", color="black",
            label="latent z: what the decoder gets back, ||z - ẑ|| / ||z||")  # fmt: skip
    ax.plot([1], [res.semantic], "D", color=kind_color(1), ms=8,
            label=f"codebook 0 (semantic): {res.semantic:.2f} of its own input left")  # fmt: skip
    if kept:
        ax.axvline(kept, color="grey", ls=":", lw=1.2, label=f"K = {kept}: what our tokens keep")
    ax.set_xticks(res.codebooks)
    ax.set_ylim(0, max(1.1, 1.05 * max(res.latent + res.acoustic)))
    ax.set_xlabel("codebooks used (K)", fontsize=11)
    ax.set_ylabel("relative residual (norm)", fontsize=11)
    ax.set_title("Residual vector quantization: each codebook codes what is left"
                 + (f"\n{note}" if note else ""), fontsize=11)  # fmt: skip
    ax.legend(fontsize=9, loc="center right")
    fig.tight_layout()
    return fig


def show_source(obj):
    """The library's own source of a function, method or class, as a highlighted code block
    (read with `inspect`, so what the notebook shows is what runs)."""
    import inspect
    import textwrap

    from IPython.display import Markdown

    return Markdown(f"```python\n{textwrap.dedent(inspect.getsource(obj))}```")


def plot_group_masks(tokenizer, ids, group: int = 0):
    """One group, a row per position: the ids its kind's mask allows (a bar in the kind's
    colour over the vocabulary) and the id it holds (a black tick)."""
    from .tokenizer import true_runs

    rows = tokenizer.explain_group(ids, group)
    lay = tokenizer.layout
    masks = lay.kind_masks()
    fig, ax = plt.subplots(figsize=(12, 0.22 * len(rows) + 1.4), layout="constrained")
    for y, row in enumerate(rows):
        kind = lay.kind_of(row["position"])
        for lo, hi in true_runs(masks[kind]):
            if hi - lo == 1:  # TEXT_PAD, one id: a marker, so that it shows at this scale
                ax.plot(lo, y, marker="s", ms=7, color=kind_color("pad"),
                        markeredgecolor=kind_color(kind), clip_on=False)  # fmt: skip
            else:
                ax.barh(y, hi - lo, left=lo, height=0.7, color=kind_color(kind), alpha=0.55)
        ax.plot([row["id"]] * 2, [y - 0.4, y + 0.4], color="black", lw=2)
    labels = [f"{r['position']}: {r['kind']}  {r['holds'].replace('▁', '␣')}" for r in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    for tick, row in zip(ax.get_yticklabels(), rows):  # a pad's light grey is too pale to read
        tick.set_color("dimgray" if row["kind"] == "TEXT_PAD" else
                       kind_color(lay.kind_of(row["position"])))  # fmt: skip
    ax.invert_yaxis()
    ax.set_xlim(0, lay.padded_vocab_size)
    ax.set_xlabel("token id (bar, and grey square for TEXT_PAD: the ids the mask allows at this "
                  "position; black: the id it holds)")
    ax.set_title(f"group {group}: {len(rows)} positions, each allowed only its kind's ids")
    return fig


# -- stage 04: seeing the alignment -------------------------------------------------------------


def plot_words(wav, sample_rate_hz: int, words: list, title: str = ""):
    """Waveform and spectrogram of a chunk, each word a shaded span at its times (labelled)."""
    import numpy as np

    t = np.arange(wav.size) / sample_rate_hz
    fig, (ax_wav, ax_spec) = plt.subplots(2, 1, figsize=(14, 4.6), sharex=True)
    ax_wav.plot(t, wav, lw=0.4, color="black")
    ax_wav.set_ylabel("amplitude")
    with np.errstate(divide="ignore"):  # silent stretches have zero power
        ax_spec.specgram(wav, Fs=sample_rate_hz, NFFT=512, noverlap=384, cmap="magma")
    ax_spec.set_ylabel("Hz")
    ax_spec.set_xlabel("time in chunk (s)")
    for i, w in enumerate(words):
        color = WORD_COLORS[i % 2]
        ax_wav.axvspan(w.start_s, max(w.end_s, w.start_s + 0.02), color=color, alpha=0.35)
        ax_spec.axvline(w.start_s, color="white", lw=0.6, alpha=0.7)
        ax_wav.text(w.start_s, ax_wav.get_ylim()[1] * (0.9 - 0.25 * (i % 3)), w.text.strip(),
                    fontsize=7, clip_on=True)  # fmt: skip
    ax_wav.set_title(title or f"{len(words)} words")
    ax_wav.set_xlim(0, t[-1] if t.size else 1)
    fig.tight_layout()
    return fig


def code_colormap(codebook_size: int = 2048):
    """A categorical colour map for code ids: one colour per code, hues shuffled (fixed seed)
    so that neighbouring ids do not look alike; a code id is a name, not an amount."""
    import numpy as np
    from matplotlib.colors import ListedColormap, hsv_to_rgb

    rng = np.random.default_rng(0)
    hsv = np.stack([rng.permutation(codebook_size) / codebook_size,
                    rng.uniform(0.45, 1.0, codebook_size),
                    rng.uniform(0.55, 1.0, codebook_size)], axis=1)  # fmt: skip
    return ListedColormap(hsv_to_rgb(hsv), name="codes")


def _slot_time_s(layout, slot: int) -> float:
    """Start of text slot ``slot`` on the time axis (the group's span split between its slots)."""
    S, gdur = layout.text_slots_per_group, layout.group_duration_s
    return (slot // S) * gdur + (slot % S) * gdur / S


def _draw_text_slots(ax, tokenizer, ids, start_s: float, end_s: float) -> None:
    """The text slots in ``[start_s, end_s]`` as cells (text in its kind colour, TEXT_PAD grey),
    each text cell labelled with its SentencePiece piece (``␣`` marks a word start)."""
    lay = tokenizer.layout
    width_s = lay.group_duration_s / lay.text_slots_per_group
    for slot, piece in enumerate(tokenizer.text_pieces(ids)):
        t0 = _slot_time_s(lay, slot)
        if not start_s - lay.group_duration_s <= t0 <= end_s:
            continue
        face = kind_color("pad" if piece is None else "text")
        ax.add_patch(plt.Rectangle((t0, 0), width_s * 0.95, 1, color=face, alpha=0.8))
        if piece is not None:
            ax.text(t0 + width_s / 2, 0.5, piece.replace("▁", "␣"), rotation=90, ha="center",
                    va="center", fontsize=7, color="white", clip_on=True)  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_yticks([])


def _draw_words(ax, words: list, start_s: float, end_s: float) -> None:
    """Each word in ``[start_s, end_s]`` as a span at its sound, labelled."""
    for w in words:
        if start_s <= w.start_s <= end_s:
            ax.axvspan(w.start_s, max(w.end_s, w.start_s + 0.03), color=WORD_COLORS[0],
                       alpha=0.5)  # fmt: skip
            ax.text(w.start_s, 0.5, w.text.strip(), fontsize=7, rotation=90, va="center",
                    clip_on=True)  # fmt: skip
    ax.set_yticks([])


def _first_slots(placements: list[dict]) -> dict[int, dict]:
    """Word index -> the placement of its first text token."""
    first = {}
    for p in placements:
        first.setdefault(p["word"], p)
    return first


def _lead_arrow(fig, ax_words, ax_text, layout, word, placement, label: bool = True) -> None:
    """An arrow from a word's sound up to the text slot its first token took."""
    slot_t = _slot_time_s(layout, placement["slot"])
    slot_mid = slot_t + layout.group_duration_s / layout.text_slots_per_group / 2
    fig.add_artist(plt.matplotlib.patches.ConnectionPatch(
        xyA=(word.start_s, 1.0), coordsA=ax_words.transData, xyB=(slot_mid, 0.0),
        coordsB=ax_text.transData, arrowstyle="->", color="tab:red", lw=1.5))  # fmt: skip
    if label:
        ax_words.annotate(f"its text, {word.start_s - slot_t:.1f} s ahead", (word.start_s, 0.15),
                          color="tab:red", fontsize=8, clip_on=True)  # fmt: skip


def plot_token_timeline(tokenizer, ids, words: list | None = None, start_s: float = 0.0,
                        end_s: float = 8.0, text_source: str = "",
                        marks_s: tuple[float, ...] = ()):  # fmt: skip
    """The token stream on a time axis: text slots with their pieces (TEXT_PAD greyed), the Mimi
    codes per codebook (a categorical colour per code, with its colour bar), the words at their
    sound, and an arrow for the text lead. Kinds take their `KIND_COLORS`. ``marks_s``: times
    (e.g. seams between stored pieces) drawn as a dashed line across the rows."""
    lay = tokenizer.layout
    S, gdur = lay.text_slots_per_group, lay.group_duration_s
    codes = tokenizer.decode(ids)[1]
    # constrained layout: the colour bar takes its width from every row, so times stay aligned
    fig, (ax_text, ax_codes, ax_words) = plt.subplots(
        3, 1, figsize=(14, 5.4), sharex=True, layout="constrained",
        gridspec_kw={"height_ratios": [1.2, 1.6, 0.9]})  # fmt: skip
    _draw_text_slots(ax_text, tokenizer, ids, start_s, end_s)
    ax_text.set_title(f"text slots ({S} per {gdur * 1000:.0f} ms; grey = TEXT_PAD)"
                      + (f", text from {text_source}" if text_source else ""))
    frame_s = 1 / lay.frame_rate_hz
    image = ax_codes.imshow(codes, aspect="auto", cmap=code_colormap(lay.codebook_size),
                            vmin=-0.5, vmax=lay.codebook_size - 0.5, interpolation="nearest",
                            extent=(0, codes.shape[1] * frame_s, codes.shape[0] - 0.5, -0.5))
    bar = fig.colorbar(image, ax=[ax_text, ax_codes, ax_words], fraction=0.03, pad=0.01,
                       ticks=[0, lay.codebook_size // 2, lay.codebook_size - 1])  # fmt: skip
    bar.set_label("code id: a category\n(same colour = same code;\nhues shuffled)", fontsize=8)
    ax_codes.set_yticks(range(codes.shape[0]),
                        ["cb0 (sem)"] + [f"cb{k}" for k in range(1, codes.shape[0])])
    for k, tick in enumerate(ax_codes.get_yticklabels()):
        tick.set_color(kind_color(k + 1))  # the codebook's colour in every figure
    ax_codes.set_title("Mimi codes per codebook, one frame (80 ms) per column: a run of one "
                       "colour is a code repeated")
    _draw_words(ax_words, words or [], start_s, end_s)
    ax_words.set_title("words at their sound")
    ax_words.set_xlabel("time (s)")
    lead = getattr(tokenizer, "text_lead_s", 0.0)
    if words:  # one arrow: from a word's sound back to the slot its first text token took
        whole = codes[:, : codes.shape[1] // lay.frames_per_group * lay.frames_per_group]
        first = _first_slots(tokenizer.encode(whole, words).placements)
        shown = [(w, first[i]) for i, w in enumerate(words)
                 if i in first and start_s + lead <= w.start_s <= end_s]
        shown = [x for x in shown if x[1]["lag_s"] == 0] or shown
        if shown:
            _lead_arrow(fig, ax_words, ax_text, lay, *shown[0])
    for t in marks_s:
        for ax in (ax_text, ax_codes, ax_words):
            ax.axvline(t, color="black", ls="--", lw=1)
    ax_words.set_xlim(start_s, end_s)
    return fig


def plot_text_leads(tokenizers: list, codes, words: list, start_s: float = 0.0,
                    end_s: float = 8.0):  # fmt: skip
    """The same ``codes[K, F]`` and words encoded by each tokenizer (e.g. ``text_lead_s`` 0 and
    2): one row of text slots per tokenizer over the words at their sound, with an arrow from
    one word's sound to its first text slot in every row."""
    fig, axes = plt.subplots(len(tokenizers) + 1, 1, figsize=(14, 1.3 * len(tokenizers) + 1.6),
                             sharex=True, layout="constrained")  # fmt: skip
    ax_words = axes[-1]
    _draw_words(ax_words, words, start_s, end_s)
    ax_words.set_title("words at their sound")
    ax_words.set_xlabel("time (s)")
    firsts = []
    for ax, tok in zip(axes, tokenizers):
        encoded = tok.encode(codes, words)
        _draw_text_slots(ax, tok, encoded.ids, start_s, end_s)
        ax.set_title(f"text slots with text_lead_s = {tok.text_lead_s:g} s (grey = TEXT_PAD)")
        firsts.append(_first_slots(encoded.placements))
    lead = max(tok.text_lead_s for tok in tokenizers)
    # one word for every arrow: after the longest lead, and placed without spill in every row
    candidates = [i for i, w in enumerate(words) if start_s + lead <= w.start_s <= end_s
                  and all(i in f for f in firsts)]  # fmt: skip
    clean = [i for i in candidates if all(f[i]["lag_s"] == 0 for f in firsts)]
    if clean or candidates:
        i = (clean or candidates)[0]
        ahead = []
        for ax, tok, first in zip(axes, tokenizers, firsts):
            ax.axvline(words[i].start_s, color=WORD_COLORS[0], ls="--", lw=1.2, zorder=3)
            _lead_arrow(fig, ax_words, ax, tok.layout, words[i], first[i], label=False)
            ahead_s = words[i].start_s - _slot_time_s(tok.layout, first[i]["slot"])
            ahead.append(f"{ahead_s:.1f} s ahead with lead {tok.text_lead_s:g} s")
        ax_words.annotate(f"\"{words[i].text.strip()}\": its text {', '.join(ahead)}",
                          (words[i].start_s, 0.15), color="tab:red", fontsize=8)  # fmt: skip
    ax_words.set_xlim(start_s, end_s)
    return fig


def plot_attention(amap, truth: list | None = None, title: str = ""):
    """Whisper's cross-attention (text tokens x audio frames), its DTW path, and, when given,
    the true word times as boxes over the tokens of each word."""
    # constrained layout: the legend sits above the axes, never over the path's end
    fig, ax = plt.subplots(figsize=(12, max(3.5, 0.22 * len(amap.tokens) + 1.5)),
                           layout="constrained")  # fmt: skip
    fps = amap.frames_per_s
    if amap.matrix.size:
        ax.imshow(amap.matrix, aspect="auto", cmap="Blues", origin="upper",
                  extent=(0, amap.matrix.shape[1] / fps, amap.matrix.shape[0] - 0.5, -0.5))
        text_idx, time_idx = amap.path
        ax.plot(time_idx / fps, text_idx, color="tab:red", lw=1.2, label="DTW path (model)")
    if truth:  # with forced text, the map's words are the true words, in order
        for w, (row, n) in zip(truth, amap.rows):
            ax.add_patch(plt.Rectangle((w.start_s, row - 0.5), w.end_s - w.start_s, n,
                                       fill=False, edgecolor="tab:green", lw=1.0))  # fmt: skip
        ax.plot([], [], color="tab:green", label="true word times")
    ax.set_yticks(range(len(amap.tokens)), [t.strip() or "·" for t in amap.tokens], fontsize=9)
    if amap.matrix.size:  # the audio the matrix covers, not the boxes' or margins' reach
        ax.set_xlim(0, amap.matrix.shape[1] / fps)
    ax.tick_params(axis="x", labelsize=10)
    ax.set_xlabel("audio time (s)", fontsize=11)
    ax.set_title(title or "cross-attention of the alignment heads, and the DTW path",
                 fontsize=12)  # fmt: skip
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside upper right", ncol=2, fontsize=10, frameon=False)
    return fig


def start_error_summary(report: dict, title: str = "word start error") -> str:
    """One line for an `align.word_start_errors` report: words matched, median and p90 error."""
    if not report["matched"]:
        return f"{title}: no word matched ({report['n_truth']} true words), nothing to measure"
    return (f"{title}: median |err| {report['median_abs_ms']:.0f} ms, p90 "
            f"{report['p90_abs_ms']:.0f} ms ({report['matched']}/{report['n_truth']} words "
            "matched)")


def plot_start_errors(report: dict, title: str = "word start error"):
    """Histogram of predicted - true word starts (ms), with the median and 90th percentile;
    None (no figure) when no word matched, as there is nothing to draw: say so with
    `start_error_summary` instead."""
    if not report["errors_ms"].size:
        return None
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(report["errors_ms"], bins=30, color="tab:purple")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_title(start_error_summary(report, title), fontsize=9)
    ax.set_xlabel("predicted start - true start (ms)")
    ax.set_ylabel("words")
    fig.tight_layout()
    return fig


def code_usage(tokenizer, id_arrays) -> list[dict]:
    """Per codebook: how many of its codes occur, and the entropy of their distribution (bits)."""
    import numpy as np

    lay = tokenizer.layout
    counts = np.zeros((lay.num_codebooks, lay.codebook_size), dtype=np.int64)
    for ids in id_arrays:
        codes = tokenizer.decode(ids)[1]
        for k in range(lay.num_codebooks):
            counts[k] += np.bincount(codes[k], minlength=lay.codebook_size)
    out = []
    for k in range(lay.num_codebooks):
        p = counts[k] / max(1, counts[k].sum())
        nz = p[p > 0]
        out.append({"codebook": k, "used": int((counts[k] > 0).sum()),
                    "entropy_bits": float(-(nz * np.log2(nz)).sum())})  # fmt: skip
    return out


def plot_dataset_stats(records: list[dict], usage: list[dict]):
    """Over the tokenized chunks: words per second, largest spill lag, pad share, and code use
    per codebook (codes used of 2048, entropy in bits; 11 bits = uniform)."""
    ok = [r for r in records if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    axes[0].hist([r["n_words"] / r["duration_s"] for r in ok], bins=15, color="dimgray")
    axes[0].set_xlabel("words per second")
    axes[0].set_ylabel("chunks")
    # not the kind colours: these are per-chunk measures, not token kinds
    axes[1].hist([r["max_lag_s"] for r in ok], bins=15, color="dimgray")
    axes[1].set_xlabel("largest spill lag (s)")
    axes[2].hist([r["pad_share"] for r in ok], bins=15, range=(0, 1), color="dimgray")
    axes[2].set_xlabel("TEXT_PAD share of text slots")
    axes[3].bar([f"cb{u['codebook']}" for u in usage], [u["used"] for u in usage],
                color=[kind_color(u["codebook"] + 1) for u in usage])  # fmt: skip
    for i, u in enumerate(usage):
        axes[3].text(i, u["used"], f"{u['entropy_bits']:.1f} b", ha="center", va="bottom",
                     fontsize=8)  # fmt: skip
    axes[3].set_ylabel("codes used (of 2048)")
    axes[3].set_title("code usage, entropy in bits")
    fig.suptitle(f"{len(ok)} tokenized chunks")
    _integer_counts(*axes[:3])
    fig.tight_layout()
    return fig


def words_sounding(words: list, start_s: float, end_s: float) -> list:
    """The words whose ``[w.start_s, w.end_s)`` overlaps ``[start_s, end_s)``: a word begun
    earlier and still sounding counts too (one with no duration counts where it starts)."""
    return [w for w in words if w.start_s < end_s and (w.end_s > start_s or w.start_s >= start_s)]


class AlignmentExplorer:
    """A chunk dropdown and a time slider that steps group by group: highlights the group on the
    waveform, lists its text slots and codes and the words sounding in it (any overlap), and
    plays the original audio of the span. ``.widget`` is the ipywidgets box to display."""

    def __init__(self, tokenizer, records: list[dict], tokens_root, chunks_root,
                 listen_s: float = 2.0):  # fmt: skip
        import ipywidgets as widgets

        from .preprocess import load_tokens, piece_audio, words_of

        self._load_tokens, self._words_of, self._piece_audio = load_tokens, words_of, piece_audio
        self.tokenizer, self.tokens_root, self.chunks_root = tokenizer, tokens_root, chunks_root
        self.records = [r for r in records if r.get("status") == "ok"]
        self.listen_s = listen_s
        gdur = tokenizer.layout.group_duration_s
        options = [(r["chunk"], i) for i, r in enumerate(self.records)]
        self.chunk = widgets.Dropdown(options=options, description="chunk",
                                      layout={"width": "60%"})  # fmt: skip
        self.time = widgets.FloatSlider(min=0.0, max=1.0, step=gdur, description="time (s)",
                                        continuous_update=False, layout={"width": "60%"})
        self.info = widgets.HTML()
        self.plot = widgets.Output()
        self.audio = widgets.Output()
        self.chunk.observe(lambda change: self.select(change["new"]), names="value")
        self.time.observe(lambda change: self.show(change["new"]), names="value")
        self.widget = widgets.VBox([self.chunk, self.time, self.plot, self.info, self.audio])
        if self.records:
            self.select(0)

    def select(self, index: int) -> None:
        """Load chunk ``index`` (the dropdown's callback) and show the group at the slider."""
        record = self.records[index]
        self.ids = self._load_tokens(self.tokens_root, record)
        self.words = self._words_of(record)
        self.wav = self._piece_audio(self.chunks_root, record)
        self.text_source = record.get("text_source", "")
        n_groups = self.ids.size // self.tokenizer.layout.group_len
        self.time.max = max(0.0, (n_groups - 1) * self.tokenizer.layout.group_duration_s)
        self.show(min(self.time.value, self.time.max))

    def group_at(self, time_s: float) -> dict:
        """The group sounding at ``time_s``: its index, span, text pieces, codes and words."""
        lay = self.tokenizer.layout
        g = min(int(time_s / lay.group_duration_s + 1e-6), self.ids.size // lay.group_len - 1)
        group_ids = self.ids[g * lay.group_len : (g + 1) * lay.group_len]
        t0 = g * lay.group_duration_s
        t1 = t0 + lay.group_duration_s
        return {"group": g, "start_s": t0, "end_s": t1,
                "text": self.tokenizer.text_pieces(group_ids),
                "codes": self.tokenizer.decode(group_ids)[1],
                "words": [w.text.strip() for w in words_sounding(self.words, t0, t1)]}  # fmt: skip

    def show(self, time_s: float) -> None:
        """Redraw everything for the group at ``time_s`` (the slider's callback)."""
        import io
        from html import escape

        from IPython.display import Audio, Image

        from .audio import MIMI_SAMPLE_RATE_HZ

        info = self.group_at(time_s)
        slots = " ".join("<span style='color:#999'>PAD</span>" if p is None
                         else f"<b>{escape(p.replace('▁', '␣'))}</b>" for p in info["text"])
        codes = "<br>".join(f"cb{k}: {' '.join(f'{c:4d}' for c in row)}"
                            for k, row in enumerate(info["codes"]))  # fmt: skip
        self.info.value = (
            f"<p>group {info['group']}: {info['start_s']:.1f}-{info['end_s']:.1f} s &nbsp; "
            f"text slots: {slots} &nbsp; (text from {escape(self.text_source or '?')})</p>"
            f"<p>words sounding now: <i>{escape(' '.join(info['words']) or '-')}</i></p>"
            f"<pre style='font-size:11px'>{codes}</pre>")  # fmt: skip
        fig, ax = plt.subplots(figsize=(12, 1.6))
        t = [i / MIMI_SAMPLE_RATE_HZ for i in range(0, self.wav.size, 40)]
        ax.plot(t, self.wav[::40], lw=0.4, color="black")
        ax.axvspan(info["start_s"], info["end_s"], color="tab:red", alpha=0.3)
        for w in self.words:
            ax.axvline(w.start_s, color=WORD_COLORS[0], lw=0.5)
        ax.set_yticks([])
        ax.set_xlim(0, self.wav.size / MIMI_SAMPLE_RATE_HZ)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=80)
        plt.close(fig)
        self._png = png.getvalue()
        a = int(info["start_s"] * MIMI_SAMPLE_RATE_HZ)
        b = min(self.wav.size, a + int(self.listen_s * MIMI_SAMPLE_RATE_HZ))
        # replace the outputs in place (works in any front end, and with no kernel in tests)
        self.plot.outputs = ()
        self.plot.append_display_data(Image(data=png.getvalue(), format="png"))
        self.audio.outputs = ()
        self.audio.append_display_data(Audio(self.wav[a:b], rate=MIMI_SAMPLE_RATE_HZ))

    def still_html(self) -> str:
        """The view now shown (waveform and group listing) as static HTML, for `with_still`."""
        import base64
        from html import escape

        if not self.records:
            return "<p><i>No tokenized pieces to explore.</i></p>"
        chunk = self.records[self.chunk.value]["chunk"]
        png = base64.b64encode(self._png).decode()
        return (f"<p><i>A still of the explorer at {escape(chunk)}, {self.time.value:.1f} s: run "
                f"the notebook to move the slider and listen.</i></p>"
                f"<img src='data:image/png;base64,{png}'/>{self.info.value}")  # fmt: skip


class _LiveOrStill:
    """One output that front ends with a kernel draw as the widget, and pages without one
    (nbconvert, nbviewer, GitHub) as the still: the bundle holds both, and those renderers
    skip a widget whose state was not saved."""

    def __init__(self, widget, html: str):
        self.widget, self.html = widget, html

    def _repr_mimebundle_(self, **kwargs):
        return {**(self.widget._repr_mimebundle_(**kwargs) or {}), "text/html": self.html}


def with_still(widget, html: str | None = None) -> _LiveOrStill:
    """Display ``widget`` live, with ``html`` (default: `widget_outline`) as what a page
    rendered without a kernel shows in its place."""
    return _LiveOrStill(widget, widget_outline(widget) if html is None else html)


def widget_outline(widget) -> str:
    """A static HTML outline of an ipywidgets tree: its headings and each control with its
    label and initial value (buttons in brackets); outputs and empty text left out."""
    from html import escape

    items = []

    def walk(w) -> None:
        name, label = type(w).__name__, escape(str(getattr(w, "description", "") or ""))
        if hasattr(w, "children"):
            for child in w.children:
                walk(child)
        elif name in ("HTML", "Output"):
            items.extend([w.value] if name == "HTML" and w.value else [])
        elif name == "Button":
            items.append(f"[{label}]")
        elif name == "Dropdown":
            items.append(f"{label}: {escape(str(w.label))} ({len(w.options)} choices)")
        elif hasattr(w, "value") and name != "FileUpload":
            items.append(f"{label or name}: {escape(str(w.value))}")
        else:
            items.append(label or name)

    walk(widget)
    return ("<p><i>An interactive widget (run the notebook to use it); its controls:</i></p>"
            "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")


# the duplex layout's user stream (`train.LOSS_KINDS`' user) in a codebook colour no figure of
# the assistant's four codebooks uses
LOSS_KIND_COLORS = {"text": "text", "pad": "pad", "semantic": "cb0", "acoustic": "cb1",
                    "user": "cb4"}


def loss_kind_color(kind: str) -> str:
    """A loss kind's colour (`train.LOSS_KINDS`: semantic is codebook 0, acoustic codebook 1
    onwards), from `KIND_COLORS`; the pad's light grey darkened enough to draw a line."""
    from matplotlib.colors import to_hex, to_rgb

    color = kind_color(LOSS_KIND_COLORS[kind])
    return to_hex([c * 0.6 for c in to_rgb(color)]) if kind == "pad" else color


def plot_training(metrics: list[dict], codebook_size: int = 2048,
                  text_vocab_size: int | None = None):  # fmt: skip
    """Training and validation loss per kind (text, pad, semantic, acoustic) over steps, with
    the loss of a uniform guess among a codebook's ``codebook_size`` codes (ln 2048 = 7.6
    nats): an audio loss above it is worse than chance. With ``text_vocab_size`` (T), also a
    uniform guess over a text slot's T + 1 ids (the text ids and TEXT_PAD; ln 32001 = 10.4)."""
    import math

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(13, 3.6), sharey=True)
    for kind in LOSS_KIND_COLORS:
        color = loss_kind_color(kind)
        for ax, key in ((ax_train, f"loss_{kind}"), (ax_val, f"val_loss_{kind}")):
            points = [(m["step"], m[key]) for m in metrics if key in m]
            if points:
                marker = "." if ax is ax_val else None
                ax.plot(*zip(*points), label=kind, color=color, marker=marker)
    total = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    if total:
        ax_train.plot(*zip(*total), label="weighted total", color="black", lw=1.5)
    for ax in (ax_train, ax_val):
        ax.axhline(math.log(codebook_size), color="black", ls=":", lw=1,
                   label=f"uniform guess, audio (ln {codebook_size})")  # fmt: skip
        if text_vocab_size:
            ax.axhline(math.log(text_vocab_size + 1), color=loss_kind_color("text"), ls=":",
                       lw=1, label=f"uniform guess, text slot (ln {text_vocab_size + 1})")
    ax_train.set_yscale("log")
    ax_train.set_title("training loss per kind")
    ax_val.set_title("validation loss per kind (held-out videos)")
    for ax in (ax_train, ax_val):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    ax_train.set_ylabel("cross-entropy (nats)")
    fig.tight_layout()
    return fig


def plot_pad_odds(rows: list[dict]):
    """P(TEXT_PAD) a model learns against the pad weight (`train.pad_odds_table`): our loss
    (the decision weighted in every text slot) and a per-class pad weight, with the data."""
    weights = [r["pad_weight"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.axhline(rows[0]["data"], color="black", lw=1, ls="--", label="share of pads in the data")
    ax.plot(weights, [r["ours"] for r in rows], "o-", color="tab:green",
            label="our loss (fitted): the decision weighted alike")  # fmt: skip
    ax.plot(weights, [r["class_weighted"] for r in rows], "s-", color="tab:red",
            label="per-class pad weight: p ∝ w·q")  # fmt: skip
    ax.set(xscale="log", xticks=weights, xticklabels=[f"{w:g}" for w in weights], ylim=(0, 1),
           xlabel="pad weight", ylabel="P(TEXT_PAD) learned")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("What a text slot learns about silence")
    fig.tight_layout()
    return fig


def plot_loss_shares(rows: list[dict]):
    """The share of the training loss each kind carries (`train.kind_loss_shares`), one bar
    per set of weights (``rows``: ``{"weights": label, "text": share, ...}``), stacked."""
    fig, ax = plt.subplots(figsize=(8.5, 1.3 + 0.5 * len(rows)))
    labels = [r["weights"] for r in rows][::-1]
    left = [0.0] * len(rows)
    for kind in [k for k in LOSS_KIND_COLORS if any(k in r for r in rows)]:  # mono: no user
        shares = [r.get(kind, 0.0) for r in rows][::-1]
        ax.barh(labels, shares, left=left, color=loss_kind_color(kind), label=kind)
        for y, (x0, share) in enumerate(zip(left, shares)):
            if share > 0.04:
                ax.text(x0 + share / 2, y, f"{share:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if kind != "pad" else "black")  # fmt: skip
        left = [x0 + share for x0, share in zip(left, shares)]
    ax.set(xlim=(0, 1), xlabel="share of the loss")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title("Share of the loss per kind, by weights (text, pad, semantic, acoustic)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def plot_recipe_comparison(rows: list[dict]):
    """Training loss over steps per recipe (`train.compare_recipes`), and each recipe's
    trainable parameters and seconds per step."""
    fig, (ax_loss, ax_params, ax_time) = plt.subplots(
        1, 3, figsize=(13, 3.4), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    colors = ("black", "tab:blue", "tab:red", "tab:green", "tab:purple")
    names = [r["recipe"] for r in rows]
    for row, color in zip(rows, colors):
        ax_loss.plot(row["steps"], row["losses"], color=color, label=row["recipe"])
    ax_loss.set(xlabel="step", ylabel="training loss (nats)", title="same data, same steps")
    ax_loss.legend(fontsize=8)
    y = range(len(rows))
    ax_params.barh(y, [r["trainable"] / 1e6 for r in rows], color=colors[: len(rows)])
    ax_params.set(yticks=list(y), yticklabels=names, xlabel="trainable parameters (M)")
    for i, r in enumerate(rows):
        ax_params.text(r["trainable"] / 1e6, i, f" {r['trainable'] / r['total']:.0%} of "
                       f"{r['total'] / 1e6:.1f} M, {r['layers']} layers", va="center",
                       fontsize=7)  # fmt: skip
    ax_params.set_xlim(0, 2.2 * max(r["trainable"] for r in rows) / 1e6)  # room for labels
    ax_time.barh(y, [r["step_s"] for r in rows], color=colors[: len(rows)])
    ax_time.set(yticks=list(y), yticklabels=[], xlabel="seconds per step (median)")
    ax_params.invert_yaxis()
    ax_time.invert_yaxis()
    fig.tight_layout()
    return fig


def plot_realtime(timelines: list[dict], tokens_per_s: float = 55.0):
    """When each 400 ms group of a streamed reply was ready (`generate.group_timeline`), wall
    time against the reply's audio time, one line per decode path. Under the diagonal
    (``tokens_per_s``, what real time needs) audio is made faster than it plays."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    top = 0.0
    for timeline, color in zip(timelines, ("tab:red", "tab:blue", "tab:green")):
        audio = [g["audio_end_s"] for g in timeline["groups"]]
        wall = [g["wall_s"] for g in timeline["groups"]]
        ax.plot(audio, wall, "o-", ms=3, color=color,
                label=f"{timeline['decode']}: first audio {timeline['first_audio_s']:.2f} s, "
                      f"{timeline['realtime_factor']:.1f}x real time")  # fmt: skip
        top = max(top, *audio, *wall)
    ax.plot([0, top], [0, top], "k--", lw=1, label=f"real time ({tokens_per_s:.0f} tokens/s)")
    ax.set(xlabel="reply audio ready up to (s)", ylabel="wall time (s)", xlim=(0, None),
           ylim=(0, None), title="Streaming a reply, group by group")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_evaluation(rows: list[dict], chance: dict[str, float] | None = None,
                    codebook_size: int = 2048, text_vocab: int = 32000):  # fmt: skip
    """Stage 07's numbers over a run's checkpoints (`evaluate.read_eval` rows): the held-out
    loss per kind, with a uniform guess among ``codebook_size`` codes, and each likelihood
    suite's accuracy (text slots as trained, solid; speech only, dashed; semantic codebook,
    circles; all codebooks, squares), with each suite's chance level (the rows' ``chance``,
    1 / clips per item, unless ``chance`` maps the suite to another). A suite scored whole
    hides its quick looks (rows with a ``limit``)."""
    import math

    whole = {r["suite"] for r in rows if not r.get("limit")}
    rows = [r for r in rows if not r.get("limit") or r["suite"] not in whole]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 3.8))
    for kind in LOSS_KIND_COLORS:
        points = sorted((r["step"], r["value"]) for r in rows
                        if r["suite"] == "loss" and r["metric"] == f"loss_{kind}")  # fmt: skip
        if points:
            ax_loss.plot(*zip(*points), marker=".", label=kind, color=loss_kind_color(kind))
    ax_loss.axhline(math.log(codebook_size), color="black", ls=":", lw=1,
                    label=f"uniform guess, audio (ln {codebook_size})")  # fmt: skip
    ax_loss.axhline(math.log(text_vocab + 1), color=loss_kind_color("text"), ls=":", lw=1,
                    label=f"uniform guess, text (ln {text_vocab + 1})")  # fmt: skip
    ax_loss.set_title("held-out loss per kind")
    ax_loss.set_ylabel("cross-entropy (nats)")
    suites = sorted({r["suite"] for r in rows if r["metric"].startswith("acc_")})
    palette = plt.get_cmap("tab10")
    for n, suite in enumerate(suites):
        color = palette(n % 10)
        for variant, ls in (("text", "-"), ("speech", "--")):
            for span, marker in (("semantic", "o"), ("all", "s")):
                key = f"acc_{variant}_{span}"
                points = sorted((r["step"], 100 * r["value"]) for r in rows
                                if r["suite"] == suite and r["metric"] == key)  # fmt: skip
                if points:
                    label = suite if (variant, span) == ("text", "semantic") else None
                    ax_acc.plot(*zip(*points), ls=ls, marker=marker, color=color, ms=5,
                                label=label, alpha=0.85)  # fmt: skip
        recorded = [r["chance"] for r in rows if r["suite"] == suite and "chance" in r]
        level = 100 * (chance or {}).get(suite, recorded[0] if recorded else 0.5)
        ax_acc.axhline(level, color=color, ls=":", lw=1)
    from matplotlib.lines import Line2D

    keys = [Line2D([], [], color="black", ls="-", label="text slots as trained"),
            Line2D([], [], color="black", ls="--", label="speech only"),
            Line2D([], [], color="black", ls="", marker="o", label="semantic codebook"),
            Line2D([], [], color="black", ls="", marker="s", label="all codebooks")]
    handles, _ = ax_acc.get_legend_handles_labels()
    if handles:
        ax_acc.legend(handles=handles + keys, fontsize=8, ncol=2, loc="lower right")
    ax_acc.set_ylim(0, 105)
    ax_acc.set_title("likelihood suites: accuracy (dotted: chance)")
    ax_acc.set_ylabel("items right (%)")
    ax_loss.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("training step")
    fig.tight_layout()
    return fig


def plot_item_logprobs(layout, explained: dict, variant: str = "text"):
    """One likelihood item (`evaluate.explain_item`): each clip's log-probability of every
    semantic code (codebook 0) over time, its mean as a dashed line: the item is right when
    the right clip's mean beats every other's (a tie is wrong), the verdict in the title."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(12, 3.4))
    palette = ("tab:green", "tab:red", "tab:gray", "tab:brown")
    for n, clip in enumerate(explained["clips"]):
        logp = clip[variant]["logp"]
        kinds = layout.kinds(logp.size)
        positions = np.flatnonzero(kinds == 1)
        groups, within = divmod(positions, layout.group_len)
        frame_s = layout.group_duration_s / layout.frames_per_group
        frames = (within - layout.text_slots_per_group) // layout.num_codebooks
        times = groups * layout.group_duration_s + frames * frame_s
        right = "right" if n == explained["correct"] else "wrong"
        color = palette[n % len(palette)]
        mean = clip[variant]["semantic"]
        ax.plot(times, logp[positions], drawstyle="steps-post", color=color, lw=1,
                label=f"{right}: \"{clip['words'][:50]}\" (mean {mean:.2f})")  # fmt: skip
        ax.axhline(mean, color=color, ls="--", lw=1.5)
    ax.set_xlabel("time in the clip (s)")
    ax.set_ylabel("log p(semantic code)")
    how = "text slots as trained" if variant == "text" else "speech only (text slots padded)"
    verdict = "right" if explained[variant]["semantic"] else "wrong"
    ax.set_title(f"{explained['id']}: {how}, semantic codebook: {verdict}")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


# -- stage 08: two speakers, two streams -------------------------------------------------------

SPEAKER_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def plot_speaker_timeline(turns: list, words: list | None = None, assistant: str | None = None,
                          title: str = ""):  # fmt: skip
    """Who speaks when: one lane per speaker, each turn a bar (the assistant's marked), and
    the words at their times on their speaker's lane."""
    from .speakers import speaker_of, speaking_time

    totals = speaking_time(turns)
    names = list(totals)
    fig, ax = plt.subplots(figsize=(14, 0.9 + 0.7 * len(names)))
    for lane, name in enumerate(names):
        color = SPEAKER_COLORS[lane % len(SPEAKER_COLORS)]
        for t in turns:
            if t.speaker == name:
                ax.barh(lane, t.duration_s, left=t.start_s, height=0.6, color=color,
                        alpha=0.9 if name == assistant else 0.5)  # fmt: skip
    for w in words or []:
        who = speaker_of(w, turns)
        if who in names:
            ax.text(w.start_s, names.index(who) + 0.38, w.text.strip(), fontsize=6,
                    rotation=60, clip_on=True)  # fmt: skip
    ax.set_yticks(range(len(names)),
                  [f"{n}{' (assistant)' if n == assistant else ''}\n{totals[n]:.0f} s"
                   for n in names])  # fmt: skip
    ax.set_ylim(-0.5, len(names) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_xlim(0, max((t.end_s for t in turns), default=1.0))
    ax.set_title(title or "who speaks when")
    fig.tight_layout()
    return fig


def plot_tracks(mix, tracks: dict, sample_rate_hz: int, turns: list | None = None,
                title: str = ""):  # fmt: skip
    """The mono mix and the tracks cut from it (name -> waveform), one row each, with the
    turns shaded in their speaker's colour."""
    import numpy as np

    from .speakers import speaking_time

    rows = {"mix": mix, **tracks}
    names = list(speaking_time(turns or []))
    t = np.arange(len(mix)) / sample_rate_hz
    fig, axes = plt.subplots(len(rows), 1, figsize=(14, 1.4 * len(rows) + 0.6), sharex=True,
                             sharey=True)  # fmt: skip
    for ax, (name, wav) in zip(axes, rows.items()):
        for turn in turns or []:
            color = SPEAKER_COLORS[names.index(turn.speaker) % len(SPEAKER_COLORS)]
            ax.axvspan(turn.start_s, turn.end_s, color=color, alpha=0.15, lw=0)
        ax.plot(t[: len(wav)], wav, lw=0.3, color="black")
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, t[-1] if t.size else 1)
    axes[0].set_title(title or "one mix, two tracks (turns shaded by speaker)")
    fig.tight_layout()
    return fig


def plot_duplex_codes(tokenizer, got_ids, true_ids=None, start_s: float = 0.0):
    """A duplex stream's codes, one row per codebook: the user's (heard: forced from the
    input), the assistant's as generated, and (with ``true_ids``) the assistant's as the
    training stream holds them, with the frames where they differ marked."""
    import numpy as np

    lay = tokenizer.layout
    _, mine, heard = tokenizer.decode_streams(got_ids)
    panels = [("user (heard)", heard), ("assistant (generated)", mine)]
    if true_ids is not None:
        panels.append(("assistant (training stream)", tokenizer.decode_streams(true_ids)[1]))
    frame_s = 1 / lay.frame_rate_hz
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 1.0 + 0.55 * sum(
        p[1].shape[0] for p in panels)), sharex=True, layout="constrained")  # fmt: skip
    for ax, (name, codes) in zip(axes, panels):
        ax.imshow(codes, aspect="auto", cmap=code_colormap(lay.codebook_size), vmin=-0.5,
                  vmax=lay.codebook_size - 0.5, interpolation="nearest",
                  extent=(start_s, start_s + codes.shape[1] * frame_s, codes.shape[0] - 0.5,
                          -0.5))  # fmt: skip
        ax.set_yticks(range(codes.shape[0]), [f"cb{k}" for k in range(codes.shape[0])])
        ax.set_title(name, fontsize=10, loc="left")
    if true_ids is not None:
        differ = np.flatnonzero((mine != panels[2][1]).any(axis=0))
        for f in differ:
            axes[1].axvline(start_s + (f + 0.5) * frame_s, color="black", lw=0.8)
        axes[1].set_title(f"assistant (generated): {differ.size} of {mine.shape[1]} frames "
                          "differ from the training stream (black lines)", fontsize=10,
                          loc="left")  # fmt: skip
    axes[-1].set_xlabel("time (s)")
    return fig


def plot_duplex_timing(steps: list, group_s: float = 0.4, title: str = ""):
    """Each 400 ms group of a duplex session: listening (Mimi's encoder), thinking and
    talking (the LM) and speaking (Mimi's decoder), stacked, against the group's duration:
    under the line the session keeps up with a live user."""
    import numpy as np

    x = np.arange(len(steps))
    parts = (("listen (encode)", "encode_s", "tab:green"),
             ("think and talk (LM)", "generate_s", "tab:blue"),
             ("speak (decode)", "decode_s", "tab:orange"))  # fmt: skip
    fig, ax = plt.subplots(figsize=(10, 3.6))
    bottom = np.zeros(len(steps))
    for label, key, color in parts:
        ms = np.array([getattr(s, key) for s in steps]) * 1e3
        ax.bar(x, ms, bottom=bottom, color=color, label=label, width=0.8)
        bottom += ms
    ax.axhline(group_s * 1e3, color="black", ls="--", lw=1,
               label=f"real time: {group_s * 1e3:.0f} ms per group")  # fmt: skip
    ax.set(xlabel="group", ylabel="ms per group", title=title or "one duplex step per 400 ms")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

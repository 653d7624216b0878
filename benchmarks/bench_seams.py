"""Chunk seams: how far a video tokenized chunk by chunk is from the same audio tokenized whole.

    python benchmarks/bench_seams.py [--chunk-s 10] [--seconds 34]

A two-voice conversation is cut from the demo podcast (true word times) and stored as exact
PCM chunks. Three ways to make its token stream are compared with tokenizing it whole:
- per chunk (what stage 03 did before): each chunk encoded on its own (Mimi restarts), padded
  to whole 400 ms groups, its words placed inside it only; the pieces joined;
- stream per video (stage 03 now), on the same PCM chunks;
- stream per video on segment-copied Opus chunks of the demo episode, as scrape makes them:
  each chunk file decodes on its own, so a few ms at every seam differ from the original.
It prints the text slots that differ, the frames whose codes all agree, and the silence
inserted at seams. Tiny profile: random Mimi weights (codes flip on float near-ties).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechlm_utils import preprocess
from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ as SR
from speechlm_utils.audio import load_audio
from speechlm_utils.captions import parse_file, split_by_chunks
from speechlm_utils.checkpoints import ensure_tiny_checkpoints, load_text_tokenizer
from speechlm_utils.codec import Codec
from speechlm_utils.config import ModelsConfig, TokenizeConfig, demo_dir
from speechlm_utils.scrape import segment_copy
from speechlm_utils.tokenizer import SpeechTokenizer


def conversation(seconds: float, turn_s: float = 5.3):
    """Alternating turns of episodes 1 and 2 and their true words, on one timeline."""
    voices = [(load_audio(demo_dir() / f"demo_ep_00{i}.{ext}"),
               parse_file(demo_dir() / f"demo_ep_00{i}.json"))
              for i, ext in ((1, "webm"), (2, "m4a"))]  # fmt: skip
    cursors, turns, words, t = [0.0, 0.0], [], [], 0.0
    while t < seconds:
        i = len(turns) % 2
        (wav, truth), a = voices[i], cursors[i]
        b = a + min(turn_s, seconds - t)
        turns.append(wav[round(a * SR) : round(b * SR)])
        words += [w.shifted(t - a) for w in truth if a <= w.start_s < b]
        t, cursors[i] = t + b - a, b
    return np.concatenate(turns), words


def pcm_tree(root: Path, wav, words, chunk_s: float) -> Path:
    folder = root / "co" / "conv"
    folder.mkdir(parents=True)
    step = round(chunk_s * SR)
    starts = list(range(0, wav.size, step))
    chunks = []
    for i, (s, ws) in enumerate(zip(starts, split_by_chunks(words, [s / SR for s in starts],
                                                             wav.size / SR))):  # fmt: skip
        sf.write(folder / f"c{i:05d}.wav", wav[s : s + step], SR, subtype="FLOAT")
        chunks.append({"file": f"c{i:05d}.wav", "start_s": s / SR,
                       "end_s": min(wav.size, s + step) / SR,
                       "words": [[w.text, w.start_s, w.end_s] for w in ws]})  # fmt: skip
    (folder / "chunks.json").write_text(json.dumps({"id": "conv", "chunks": chunks,
                                                    "text_source": "sidecar:json"}))  # fmt: skip
    return root


def stream(cfg, models, codec, tt, chunks: Path, tokens: Path) -> np.ndarray:
    preprocess.run_tokenize(cfg, models, chunks, tokens, codec=codec, text_tokenizer=tt,
                            progress=False)  # fmt: skip
    return np.concatenate([preprocess.load_tokens(tokens, r)
                           for r in preprocess.stream_pieces(tokens)])  # fmt: skip


def per_chunk(tokenizer, codec, wav, words, chunk_s: float) -> np.ndarray:
    """The old way: every chunk on its own, padded to whole groups, then joined."""
    step, out = round(chunk_s * SR), []
    starts = list(range(0, wav.size, step))
    for s, ws in zip(starts, split_by_chunks(words, [s / SR for s in starts], wav.size / SR)):
        piece = wav[s : s + step]
        group = 5 * 1920
        padded = np.zeros(math.ceil(piece.size / group) * group, np.float32)
        padded[: piece.size] = piece
        codes = codec.encode(torch.from_numpy(padded)[None, None])[0].numpy()
        out.append(tokenizer.encode(codes, ws).ids)
    return np.concatenate(out)


def compare(name: str, ids: np.ndarray, whole: np.ndarray, layout) -> dict:
    n = min(ids.size, whole.size) // layout.group_len * layout.group_len
    kinds = layout.kinds(n)
    text = kinds == 0
    a, b = ids[:n], whole[:n]
    frames = (a[~text] == b[~text]).reshape(-1, layout.num_codebooks).all(1)
    return {"way": name, "groups": ids.size // layout.group_len,
            "whole_groups": whole.size // layout.group_len,
            "text_slots_differing": int((a[text] != b[text]).sum()),
            "text_slots": int(text.sum()), "frames_agreeing": float(frames.mean()),
            "silence_inserted_s": (ids.size - whole.size) / layout.tokens_per_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunk-s", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=34.0)
    args = parser.parse_args()
    models = ModelsConfig.from_profile("tiny")
    ensure_tiny_checkpoints(models)
    codec, tt = Codec.load(models, 4), load_text_tokenizer(models)
    cfg = TokenizeConfig.from_profile("tiny", workers=1)
    tokenizer = SpeechTokenizer.from_config(tt, cfg)
    wav, words = conversation(args.seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        whole = stream(cfg, models, codec, tt, pcm_tree(tmp / "w", wav, words, 1e6), tmp / "wt")
        rows.append(compare("per chunk (before)", per_chunk(tokenizer, codec, wav, words,
                                                            args.chunk_s), whole, tokenizer.layout))
        chunked = stream(cfg, models, codec, tt, pcm_tree(tmp / "c", wav, words, args.chunk_s),
                         tmp / "ct")  # fmt: skip
        rows.append(compare("stream per video (now)", chunked, whole, tokenizer.layout))
        media = demo_dir() / "demo_ep_001.webm"  # real segment copy: lossy seams
        ep = load_audio(media)
        ep_words = parse_file(demo_dir() / "demo_ep_001.json")
        ep_whole = stream(cfg, models, codec, tt, pcm_tree(tmp / "ew", ep, ep_words, 1e6),
                          tmp / "ewt")  # fmt: skip
        folder = tmp / "o" / "de" / "demo"
        chunks = segment_copy(media, folder, "demo", 20.0, "webm")
        per = split_by_chunks(ep_words, [c["start_s"] for c in chunks], ep.size / SR)
        for c, ws in zip(chunks, per):
            c["words"] = [[w.text, w.start_s, w.end_s] for w in ws]
        (folder / "chunks.json").write_text(json.dumps({"id": "demo", "chunks": chunks,
                                                        "text_source": "sidecar:json"}))
        opus = stream(cfg, models, codec, tt, tmp / "o", tmp / "ot")
        rows.append(compare("stream per video, Opus segment copy (20 s)", opus, ep_whole,
                            tokenizer.layout))  # fmt: skip
    print(f"{args.seconds:g} s two-voice conversation in {args.chunk_s:g} s PCM chunks; the demo "
          "episode 1 for the Opus row; tiny profile (random Mimi)\n")
    print("| way | groups (whole) | text slots differing | frames with identical codes | "
          "silence inserted |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['way']} | {r['groups']} ({r['whole_groups']}) | "
              f"{r['text_slots_differing']} of {r['text_slots']} | {r['frames_agreeing']:.1%} | "
              f"{r['silence_inserted_s']:.2f} s |")


if __name__ == "__main__":
    main()

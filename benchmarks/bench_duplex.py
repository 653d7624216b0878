"""Stage 08 benchmark: one duplex step per 400 ms group, against the 400 ms it covers.

A `duplex.DuplexSession` is played 12 s of the demo podcast (a guest's track, as a live user
would speak), per decode path: per group the time to listen (Mimi's streaming encoder on the
user's 400 ms), to think and talk (the LM: the group's 22 sampled positions, the user's forced
codes riding along) and to speak (Mimi's streaming decoder on the assistant's codes), the
median and the worst group, and whether the step keeps up with a live user. Baseline measured
in the same run: the same LM in the mono layout generating as many groups (its 22 positions
per group sampled, nothing heard), so the ratio is what listening costs the LM. Then the estimate
for Mistral-7B in bf16 per GPU (`duplex.latency_plan`: the LM's part from
`generate.realtime_plan`'s model of a step, what it leaves of 400 ms for Mimi, and the step with
Mimi as measured here).

    python benchmarks/bench_duplex.py               # the tiny model and Mimi, this machine
    python benchmarks/bench_duplex.py --device cuda  # the same on a GPU (adds compiled)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from speechlm_utils import duplex, generate
from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ, load_audio
from speechlm_utils.checkpoints import ensure_tiny_checkpoints, load_text_tokenizer
from speechlm_utils.codec import Codec
from speechlm_utils.config import ModelsConfig, demo_dir, pick_device
from speechlm_utils.generate import Sampling
from speechlm_utils.model import build_speech_lm
from speechlm_utils.speakers import split_tracks, turns_from_transcript
from speechlm_utils.tokenizer import SpeechTokenizer


def guest_track(seconds: float) -> np.ndarray:
    """The guest's side of demo episode 1 from 8 s on (the host talks, then the guest)."""
    wav = load_audio(demo_dir() / "demo_ep_001.webm", MIMI_SAMPLE_RATE_HZ)
    turns = turns_from_transcript(demo_dir() / "demo_ep_001.json")
    _, guest = split_tracks(wav, MIMI_SAMPLE_RATE_HZ, turns, "host")
    start = 8 * MIMI_SAMPLE_RATE_HZ
    return guest[start : start + int(seconds * MIMI_SAMPLE_RATE_HZ)]


def mono_ms_per_group(model, layout, groups: int, decode: str) -> float:
    """The mono layout's LM generating ``groups`` groups (every position sampled)."""
    prompt = [layout.text_pad_id] * layout.group_len
    tokens = generate.stream_tokens(model, layout, prompt, groups * layout.group_len,
                                    Sampling(seed=0), decode=decode)  # fmt: skip
    next(tokens)  # warm
    start = time.perf_counter()
    for _ in tokens:
        pass
    return (time.perf_counter() - start) * 1e3 / groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="default: the best there is")
    parser.add_argument("--seconds", type=float, default=12.0, help="user audio played in")
    parser.add_argument("--user-codebooks", type=int, default=duplex.DUPLEX_USER_CODEBOOKS)
    args = parser.parse_args()
    device = args.device or pick_device()
    models = ModelsConfig.from_profile("tiny")
    ensure_tiny_checkpoints(models)
    tokenizer = SpeechTokenizer(load_text_tokenizer(models), user_codebooks=args.user_codebooks)
    lay = tokenizer.layout
    torch.manual_seed(0)
    model = build_speech_lm(models, lay).to(device).eval()
    torch.manual_seed(0)
    mono_tok = SpeechTokenizer(load_text_tokenizer(models))
    mono_model = build_speech_lm(models, mono_tok.layout).to(device).eval()
    codec = Codec.load(models, lay.num_codebooks, device)
    wav = guest_track(args.seconds)
    decodes = ["eager", "static"] + (["compiled"] if device.startswith("cuda") else [])
    print(f"tiny Mistral ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), "
          f"Mimi (real architecture, random weights) on {device}; duplex layout with "
          f"{lay.user_codebooks} user codebooks: {lay.group_len} tokens per 400 ms group, "
          f"{wav.size / MIMI_SAMPLE_RATE_HZ:.0f} s of a guest's track played in\n")
    rows, listen, speak = [], [], []
    for decode in decodes:
        session = duplex.DuplexSession(model, tokenizer, codec, Sampling(seed=0), decode=decode)
        duplex.run_file(session, wav[: 2 * session.group_samples])  # warm (and compile)
        result = duplex.run_file(session, wav)
        steps = result.steps
        part = {k: np.array([getattr(s, k) for s in steps]) * 1e3
                for k in ("encode_s", "generate_s", "decode_s", "compute_s")}  # fmt: skip
        listen.append(np.median(part["encode_s"]))
        speak.append(np.median(part["decode_s"]))
        mono = mono_ms_per_group(mono_model, mono_tok.layout, len(steps), decode)
        total = np.median(part["compute_s"])
        rows.append({"decode": decode, "listen ms": round(np.median(part["encode_s"])),
                     "think and talk ms": round(np.median(part["generate_s"])),
                     "speak ms": round(np.median(part["decode_s"])), "per group ms": round(total),
                     "worst group ms": round(part["compute_s"].max()),
                     "x real time": round(lay.group_duration_s * 1e3 / total, 2),
                     "LM vs mono": f"{np.median(part['generate_s']) / mono:.2f}x",
                     "keeps up": "yes" if part["compute_s"].max() < 400 else
                     ("on average" if total < 400 else "no")})  # fmt: skip
    print(_markdown(rows))
    print("\nLM vs mono: the duplex group's LM time over the same LM in the mono layout making "
          "a group (22 positions sampled in both; the user's codes ride along in duplex).\n")
    print("Mistral-7B in bf16, estimate per GPU (Mimi's parts as measured here):\n")
    plan = duplex.latency_plan(lay, float(np.median(listen) + np.median(speak)))
    print(_markdown(plan))


def _markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

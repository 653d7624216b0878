"""Regenerate the bundled demo podcast: three short two-speaker episodes with true word times.

Each word is synthesized on its own with espeak-ng (two voices), trimmed of silence and
joined with short gaps, so every word's start and end in the final audio is known exactly.
The episodes are stored the way YouTube serves audio (Opus in WebM, AAC in M4A) beside a JSON
transcript each. Needs espeak-ng (``apt-get install espeak-ng``) only to regenerate; the
outputs are committed.

    python data/demo/make_demo.py            # writes data/demo/demo_ep_00{1,2,3}.{webm|m4a,json}
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from speechlm_utils.audio import ffmpeg_exe  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent
SAMPLE_RATE_HZ = 22_050  # espeak-ng's native rate
WORD_GAP_S = 0.06  # between words of a phrase
PHRASE_GAP_S = 0.25  # after , ; :
SENTENCE_GAP_S = 0.45  # after . ? !
TURN_GAP_S = 0.7  # between speakers
SILENCE_DB = -45.0  # trim threshold for each synthesized word
VOICES = {
    "host": ["-v", "en-us+Annie", "-s", "165", "-p", "55"],
    "guest": ["-v", "en-gb+Andy", "-s", "150", "-p", "35"],
}

EPISODES = [
    {
        "id": "demo_ep_001",
        "title": "Bread at Home, episode one: starting a sourdough",
        "format": "webm",
        "turns": [
            ("host", "Welcome back to the kitchen table. Today my guest bakes bread every "
                     "single morning, and I want to know how it started."),
            ("guest", "Thanks for having me. It started with a jar of flour and "
                      "water that my neighbour gave me, and I had no idea what to do with it."),
            ("host", "So that was the starter? The thing people keep alive for years?"),
            ("guest", "Exactly. You feed it every day, it bubbles, it smells a little sour, "
                      "and after a week it can lift a whole loaf."),
            ("host", "What went wrong the first time?"),
            ("guest", "Everything. The dough was flat, the crust was pale, and the middle "
                      "was gummy. But the second loaf was better, and that kept me going."),
        ],
    },
    {
        "id": "demo_ep_002",
        "title": "City Wild, episode two: why pigeons love us",
        "format": "m4a",
        "turns": [
            ("host", "Let's talk about pigeons. Why are there so many of them in every city?"),
            ("guest", "Because we built cities that look like their old home. Tall stone "
                      "buildings are a lot like the sea cliffs their ancestors nested on."),
            ("host", "Wait, so a railway station is basically a cliff?"),
            ("guest", "To a pigeon, yes. Ledges, shelter from the wind, and plenty of food "
                      "dropped by people in a hurry."),
            ("host", "And they find their way home too, right?"),
            ("guest", "They do. They seem to use the sun, the magnetic field, and even smells "
                      "and sounds. We still argue about how it all fits together."),
        ],
    },
    {
        "id": "demo_ep_003",
        "title": "Small Models, episode three: teaching a model to listen",
        "format": "webm",
        "turns": [
            ("host", "My guest today trains language models that listen and speak. "
                     "Where do you even begin?"),
            ("guest", "You begin by turning sound into tokens. A codec squeezes each slice "
                      "of audio into a few numbers, and the model learns to predict them."),
            ("host", "Like words, but for sound?"),
            ("guest", "Right. We also put the text of each word a little before its sound, "
                      "so the model can plan what it is about to say."),
            ("host", "How much audio does that take?"),
            ("guest", "Thousands of hours for a good model. For learning, a few minutes is "
                      "enough to watch it memorise and repeat what it heard."),
        ],
    },
]


def synthesize_word(word: str, voice: list[str], workdir: Path) -> np.ndarray:
    """One word through espeak-ng, trimmed of leading and trailing silence: ``[T]`` float32."""
    wav_path = workdir / "word.wav"
    subprocess.run(["espeak-ng", *voice, "-w", str(wav_path), word], check=True)
    audio, rate = sf.read(wav_path, dtype="float32")
    assert rate == SAMPLE_RATE_HZ, rate
    level = 10 ** (SILENCE_DB / 20)
    loud = np.flatnonzero(np.abs(audio) > level)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {word!r}")
    return audio[loud[0] : loud[-1] + 1]


def gap_after(word: str) -> float:
    if word.endswith((".", "?", "!")):
        return SENTENCE_GAP_S
    if word.endswith((",", ";", ":")):
        return PHRASE_GAP_S
    return WORD_GAP_S


def render_episode(episode: dict, workdir: Path) -> tuple[np.ndarray, list[dict]]:
    """The episode's audio ``[T]`` and its words with exact ``start_s`` / ``end_s``."""
    pieces: list[np.ndarray] = [np.zeros(int(0.3 * SAMPLE_RATE_HZ), np.float32)]
    cursor = pieces[0].size
    words = []
    for turn_index, (speaker, text) in enumerate(episode["turns"]):
        tokens = text.split()
        for i, word in enumerate(tokens):
            audio = synthesize_word(word, VOICES[speaker], workdir)
            words.append({
                "word": word,
                "start_s": round(cursor / SAMPLE_RATE_HZ, 4),
                "end_s": round((cursor + audio.size) / SAMPLE_RATE_HZ, 4),
                "speaker": speaker,
                "turn": turn_index,
            })  # fmt: skip
            gap = TURN_GAP_S if i == len(tokens) - 1 else gap_after(word)
            silence = np.zeros(int(gap * SAMPLE_RATE_HZ), np.float32)
            pieces += [audio, silence]
            cursor += audio.size + silence.size
    return np.concatenate(pieces), words


def encode(wav_path: Path, out_path: Path, fmt: str) -> None:
    """Compress as YouTube serves audio: Opus in WebM, or AAC-LC in M4A."""
    codec = ["-c:a", "libopus", "-b:a", "32k"] if fmt == "webm" else ["-c:a", "aac", "-b:a", "48k"]
    cmd = [ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error", "-i", str(wav_path),
           *codec, "-map_metadata", "-1", "-fflags", "+bitexact", str(out_path)]  # fmt: skip
    subprocess.run(cmd, check=True)


def main() -> None:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed to regenerate the demo: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for episode in EPISODES:
            audio, words = render_episode(episode, workdir)
            wav_path = workdir / f"{episode['id']}.wav"
            sf.write(wav_path, audio, SAMPLE_RATE_HZ)
            media = OUT_DIR / f"{episode['id']}.{episode['format']}"
            encode(wav_path, media, episode["format"])
            transcript = {
                "id": episode["id"],
                "title": episode["title"],
                "media": media.name,
                "duration_s": round(audio.size / SAMPLE_RATE_HZ, 4),
                "speakers": {k: " ".join(v) for k, v in VOICES.items()},
                "source": "espeak-ng, synthesized word by word (times are exact)",
                "words": words,
            }
            (OUT_DIR / f"{episode['id']}.json").write_text(json.dumps(transcript, indent=1) + "\n")
            print(f"{media.name}: {transcript['duration_s']:.1f} s, {len(words)} words, "
                  f"{media.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()

"""Stage 08: full duplex: a model that listens while it talks.

A duplex run is trained on the duplex layout (`tokenizer.TokenLayout` with ``user_codebooks``
> 0): every frame holds the assistant's K codebooks, then the user's K_user. `DuplexSession`
runs it live, one 400 ms group at a time:

1. **listen**: the user's next 400 ms go through Mimi's streaming encoder (its state carried
   from group to group, as stage 03 encoded the training tracks), giving ``codes[K_user, 5]``;
2. **think and talk**: `generate.duplex_tokens` forces those codes into the group's user
   positions (never sampled) and samples the assistant's text slots and codebooks around them:
   the model hears the user's frame f before it writes its own frame f + 1, so it may stay
   silent, back-channel or talk over;
3. **speak**: Mimi's streaming decoder turns the assistant's codes into its 400 ms of audio.

Each step is timed (`GroupStep`): to keep up with a live user the three together must take
under 400 ms. `run_file` plays a recording into a session (in real time, or as fast as it
goes) and `write_outputs` stores a stereo wav (user left, assistant right) and the text channel
with times. `DuplexWidget` is the notebook front end: the microphone streams to the kernel in
400 ms pieces and the reply streams back, with the measured latency shown.
"""

from __future__ import annotations

import base64
import math
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path

import numpy as np
import torch

from .audio import MIMI_SAMPLE_RATE_HZ
from .codec import small_steps
from .config import ModelsConfig, TokenizeConfig, TrainConfig, resolve_profile
from .generate import Sampling, duplex_tokens, pick_decode
from .tokenizer import TEXT_KIND


class NotDuplexError(ValueError):
    """A run (or tokenizer) of the mono layout where the duplex one is needed."""


def not_duplex_message(what: str = "this run") -> str:
    return (f"{what} uses the mono layout (one mixed stream): full duplex needs a model trained "
            "on the duplex layout. Tokenize with --user-codebooks N (and speaker turns: a "
            "transcript that labels speakers, or `python -m speechlm_utils diarize`), then "
            "train on those tokens (notebook 08)")  # fmt: skip


def check_duplex(tokenizer, what: str = "this run") -> None:
    if not tokenizer.layout.duplex:
        raise NotDuplexError(not_duplex_message(what))


@dataclass
class GroupStep:
    """One 400 ms group of a duplex session: what was heard, what was said, how long it took."""

    group: int  # index in the stream (the prompt's groups come first)
    ids: list[int]  # the group's ids, user positions included
    user_codes: np.ndarray  # [K_user, F] heard (forced)
    codes: np.ndarray  # [K, F] the assistant's
    audio: np.ndarray  # [F * 1920] the assistant's audio, 24 kHz
    text: str  # the words the assistant wrote in this group's text slots
    encode_s: float  # Mimi's streaming encoder on the user's 400 ms
    generate_s: float  # the LM: the group's sampled and forced positions
    decode_s: float  # Mimi's streaming decoder on the assistant's codes

    @property
    def compute_s(self) -> float:
        return self.encode_s + self.generate_s + self.decode_s


class DuplexSession:
    """A live duplex conversation over one model (see the module doc). `start` it (with an
    optional prompt), then `step` it with each 400 ms of the user's audio; `close` frees
    Mimi's streaming state. One session at a time per codec."""

    def __init__(self, model, tokenizer, codec, sampling: Sampling | None = None,
                 decode: str = "auto"):  # fmt: skip
        check_duplex(tokenizer, "this tokenizer")
        self.model, self.tokenizer, self.codec = model, tokenizer, codec
        self.sampling = sampling or Sampling()
        self.decode = pick_decode(decode, next(model.parameters()).device)
        lay = tokenizer.layout
        if codec.num_codebooks < lay.num_codebooks:
            raise ValueError(f"the codec gives {codec.num_codebooks} codebooks, the layout "
                             f"needs {lay.num_codebooks}")  # fmt: skip
        self.group_samples = lay.frames_per_group * codec.frame_samples  # 9600: 400 ms
        self._stack: ExitStack | None = None
        self._groups = None
        self.steps: list[GroupStep] = []
        self.failed: str | None = None  # why the last conversation ended in an error

    @property
    def group_duration_s(self) -> float:
        return self.tokenizer.layout.group_duration_s

    @torch.no_grad()
    def start(self, prompt_ids=None, user_wav: np.ndarray | None = None) -> None:
        """Begin a conversation. Without a prompt it opens with one group of silence on both
        sides; ``prompt_ids`` (duplex ids from a group start) continue a stored stream, and
        ``user_wav`` (24 kHz, the user's track under the prompt) warms the encoder so the next
        groups' codes are what encoding the whole track gives. The decoder is warmed with the
        prompt's own assistant codes."""
        self.close()
        self.failed = None
        self._stack = ExitStack()
        self._stack.enter_context(self.codec.mimi.streaming(batch_size=1))
        try:
            self._begin(prompt_ids, user_wav)
        except BaseException:
            self.close()  # a bad prompt must not leave Mimi streaming
            raise

    def _begin(self, prompt_ids, user_wav) -> None:
        lay = self.tokenizer.layout
        if prompt_ids is None:
            silence = self._encode(np.zeros(self.group_samples, np.float32))  # [K, F]
            prompt = self.tokenizer.encode(silence[: lay.num_codebooks], [],
                                           user_codes=silence[: lay.user_codebooks]).ids
        else:
            prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
            if prompt.size % lay.group_len:
                raise ValueError("the prompt must be whole groups")
            if user_wav is not None:
                wav = np.asarray(user_wav, np.float32)
                if math.ceil(wav.size / self.group_samples) != prompt.size // lay.group_len:
                    raise ValueError(f"user_wav covers {wav.size / self.group_samples:.2f} "
                                     f"groups, the prompt {prompt.size // lay.group_len}: give "
                                     "the user's audio under the prompt exactly")  # fmt: skip
                n = math.ceil(wav.size / self.group_samples) * self.group_samples
                padded = np.zeros(n, np.float32)
                padded[: wav.size] = wav
                for a in range(0, n, self.group_samples):
                    self._encode(padded[a : a + self.group_samples])
        _, codes, _ = self.tokenizer.decode_streams(prompt)
        if codes.shape[1]:
            self.codec._decode_step(codes)  # the decoder's state follows the prompt's audio
        self.prompt_ids = prompt
        self._inbox: deque = deque()
        self._groups = duplex_tokens(self.model, lay, prompt, self._heard(), self.sampling,
                                     decode=self.decode)  # fmt: skip
        self.steps = []

    def _heard(self):
        while self._inbox:
            yield self._inbox.popleft()

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        """One group of 24 kHz audio through Mimi's streaming encoder: ``codes[K, F]``."""
        x = torch.from_numpy(np.asarray(wav, np.float32)).reshape(1, 1, -1)
        with small_steps(self.codec.device):
            return self.codec.mimi.encode(x.to(self.codec.device))[0].cpu().numpy()

    @torch.no_grad()
    def step(self, user_wav: np.ndarray) -> GroupStep:
        """The user's next 400 ms (``[9600]`` at 24 kHz; shorter is padded with silence) in,
        the assistant's next 400 ms out (see the module doc). A session not started starts
        here; one that ended in an error raises until it is `start`ed again (never a new
        conversation behind the caller's back)."""
        if self._stack is None:
            if self.failed:
                raise RuntimeError(f"this duplex session ended after an error ({self.failed}): "
                                   "start it again")  # fmt: skip
            self.start()
        try:
            return self._step(user_wav)
        except BaseException as err:  # the stream cannot go on: free Mimi, say why
            self.close()
            self.failed = f"{type(err).__name__}: {err}"[:300]
            raise

    def _step(self, user_wav: np.ndarray) -> GroupStep:
        lay = self.tokenizer.layout
        wav = np.zeros(self.group_samples, np.float32)
        got = np.asarray(user_wav, np.float32).reshape(-1)[: self.group_samples]
        wav[: got.size] = got
        t0 = time.perf_counter()
        heard = self._encode(wav)[: lay.user_codebooks]
        t1 = time.perf_counter()
        self._inbox.append(heard)
        group = next(self._groups, None)
        if group is None:  # cannot happen while the inbox holds this group's codes
            raise RuntimeError("the duplex stream ended early")
        t2 = time.perf_counter()
        ids = np.asarray(group["ids"], dtype=np.int64)
        _, codes, _ = self.tokenizer.decode_streams(ids)
        with small_steps(self.codec.device):
            audio = self.codec._decode_step(codes)
        t3 = time.perf_counter()
        slots = ids[lay.kinds(ids.size) == TEXT_KIND]
        text = self.tokenizer.sp.decode([int(i) for i in slots if i != lay.text_pad_id])
        step = GroupStep(group["group"], group["ids"], group["user_codes"], codes, audio, text,
                         t1 - t0, t2 - t1, t3 - t2)  # fmt: skip
        self.steps.append(step)
        return step

    def close(self) -> None:
        """End the conversation and Mimi's streaming state (the session can `start` again)."""
        if self._groups is not None:
            self._groups.close()
            self._groups = None
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def warm_up(self, groups: int = 2) -> None:
        """A few silent groups, then a fresh start: a compiled decode step compiles (and CUDA
        graphs are captured) here, not inside a live conversation's first group."""
        self.start()
        try:
            for _ in range(groups):
                self.step(np.zeros(self.group_samples, np.float32))
        finally:
            self.close()

    def __enter__(self) -> DuplexSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class DuplexResult:
    """A recording played into a session: both sides, the text channel and the timings."""

    user: np.ndarray  # [T] the input, padded to whole groups, 24 kHz
    assistant: np.ndarray  # [T] the reply, aligned with the input
    steps: list[GroupStep]
    start_s: float  # stream time of the first step (the prompt, or the silent opening, first)
    group_s: float = 0.4
    lags_s: list[float] = field(default_factory=list)  # real time: ready after the group ended
    text_lead_s: float = 2.0  # the layout's: a word's text comes this long before its sound

    @property
    def stereo(self) -> np.ndarray:
        """``[T, 2]``: the user left, the assistant right, on the same clock."""
        return np.stack([self.user, self.assistant[: self.user.size]], axis=1)

    def text_timeline(self) -> list[tuple[float, str]]:
        """(time into the recording of the group, words the assistant wrote in its text
        slots) for each group with words: the same clock as `user` and `assistant` (sample 0 =
        0 s). The words are meant to sound about `text_lead_s` later."""
        return [(round(i * self.group_s, 2), s.text.strip())
                for i, s in enumerate(self.steps) if s.text.strip()]  # fmt: skip

    def timing(self) -> dict:
        """Mean and worst seconds per group of each part, against the group's duration:
        ``keeps_up`` only when even the worst group took less than the group lasts
        (``groups_over`` counts those that did not; see `timing_verdict`)."""
        return step_timing(self.steps, self.group_s, self.lags_s)


def step_timing(steps: list[GroupStep], group_s: float, lags_s: list[float] = ()) -> dict:
    """`DuplexResult.timing` of any steps (a live session's too)."""
    parts = {k: [getattr(s, k) for s in steps]
             for k in ("encode_s", "generate_s", "decode_s", "compute_s")}  # fmt: skip
    out = {f"mean_{k}": float(np.mean(v)) for k, v in parts.items() if v}
    out["max_compute_s"] = float(max(parts["compute_s"], default=0.0))
    out["group_s"] = group_s
    out["groups"] = len(steps)
    out["groups_over"] = sum(c >= group_s for c in parts["compute_s"])
    out["keeps_up"] = bool(steps) and out["groups_over"] == 0
    if lags_s:
        out["max_lag_s"] = float(max(lags_s))
    return out


def timing_verdict(timing: dict) -> str:
    """Whether the steps kept up with real time, judged by the worst group, in words."""
    budget = f"the {timing['group_s'] * 1e3:.0f} ms each group lasts"
    if not timing["groups"]:
        return "no groups yet"
    if timing["keeps_up"]:
        return f"keeps up: every group took less than {budget}"
    if timing["mean_compute_s"] < timing["group_s"]:
        return (f"falls behind at times: {timing['groups_over']} of {timing['groups']} groups "
                f"took longer than {budget} (fast enough on average only)")
    return f"falls behind: on average a group takes longer than {budget}"


def run_file(session: DuplexSession, wav24: np.ndarray, realtime: bool = False,
             prompt_ids=None, prompt_user_wav: np.ndarray | None = None,
             progress: bool = False) -> DuplexResult:  # fmt: skip
    """Play a 24 kHz recording into a started-fresh session group by group. ``realtime``:
    each 400 ms is given only once it would have been heard (so ``lags_s`` measures how late
    each reply group is after its input ended); otherwise as fast as the model goes."""
    from tqdm.auto import tqdm

    if realtime:
        session.warm_up()  # compiling must not eat the first groups' real time
    session.start(prompt_ids, prompt_user_wav)
    n = session.group_samples
    wav = np.asarray(wav24, np.float32).reshape(-1)
    groups = max(1, math.ceil(wav.size / n))
    user = np.zeros(groups * n, np.float32)
    user[: wav.size] = wav
    out, lags = [], []
    begin = time.perf_counter()
    try:
        for g in tqdm(range(groups), desc="duplex", unit="group", disable=not progress):
            heard_at = begin + (g + 1) * session.group_duration_s  # the group's end is heard
            if realtime:
                time.sleep(max(0.0, heard_at - time.perf_counter()))
            step = session.step(user[g * n : (g + 1) * n])
            out.append(step.audio)
            if realtime:
                lags.append(time.perf_counter() - heard_at)
    finally:
        session.close()  # Mimi's streaming state goes: the codec serves others again
    prompt_groups = session.prompt_ids.size // session.tokenizer.layout.group_len
    return DuplexResult(user, np.concatenate(out), list(session.steps),
                        prompt_groups * session.group_duration_s, session.group_duration_s,
                        lags, session.tokenizer.text_lead_s)  # fmt: skip


def write_outputs(result: DuplexResult, out_wav: str | Path) -> tuple[Path, Path]:
    """``out_wav``: stereo 16-bit wav, the user left and the assistant right, on the stream's
    clock: group g of the reply beside group g of the input it was generated with (in real
    time each reply group was ready ``lags_s[g]`` after its input ended; the wav leaves that
    out); beside it ``.txt``: the assistant's text channel with times."""
    import soundfile as sf

    out_wav = Path(out_wav)
    tmp = out_wav.with_name(f".{out_wav.name}.tmp")
    sf.write(tmp, np.clip(result.stereo, -1, 1), MIMI_SAMPLE_RATE_HZ, format="WAV",
             subtype="PCM_16")
    tmp.replace(out_wav)
    text = out_wav.with_suffix(".txt")
    lines = [f"# the assistant's text channel: time (s) in {out_wav.name} of the 400 ms group "
             "whose text slots hold the words; text runs ahead of its sound, so they are "
             f"spoken about {result.text_lead_s:g} s later"]  # fmt: skip
    lines += [f"{t:8.2f}  {words}" for t, words in result.text_timeline()]
    tmp = text.with_name(f".{text.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(text)
    return out_wav, text


def stored_user_groups(layout, ids) -> list[np.ndarray]:
    """The user's ``codes[K_user, F]`` of each whole group of duplex ``ids`` (from a group
    start): what `generate.duplex_tokens` forces, as the stream stored them."""
    lay, F = layout, layout.frames_per_group
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    user = lay.audio_codes(ids[: ids.size // lay.group_len * lay.group_len])[lay.num_codebooks:]
    return [user[:, i : i + F] for i in range(0, user.shape[1], F)]


def continue_with_stored_user(model, layout, ids, prompt_groups: int, groups: int,
                              sampling: Sampling | None = None, decode: str = "eager"
                              ) -> np.ndarray:  # fmt: skip
    """``groups`` groups after the first ``prompt_groups`` of a stored duplex stream ``ids``,
    the user's positions forced to the stream's own user codes (never sampled: a duplex run
    does not learn to predict them) and the assistant's sampled around them, as a
    `DuplexSession` does with live audio. ``[groups * group_len]`` ids."""
    lay = layout
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    a, b = prompt_groups * lay.group_len, (prompt_groups + groups) * lay.group_len
    if ids.size < b:
        raise ValueError(f"the stream holds {ids.size // lay.group_len} groups, not the "
                         f"{prompt_groups} + {groups} asked for")  # fmt: skip
    heard = stored_user_groups(lay, ids[a:b])
    out = [g["ids"] for g in duplex_tokens(model, lay, ids[:a], heard, sampling, decode=decode)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def memorised_check(session: DuplexSession, ids, user_wav: np.ndarray, prompt_s: float = 4.0,
                    continue_s: float = 8.0) -> dict:  # fmt: skip
    """The notebook's check of a model that memorised a duplex training stream: prompt with
    its first ``prompt_s``, then play the user's track (``user_wav``, 24 kHz, from the stream's
    start) into the session live for ``continue_s``, greedily, and compare the assistant's
    codes and text with what the stream really holds, and the user positions with it too.
    ``stored`` is the same continuation fed the stream's own user codes instead of the live
    audio: what the model memorised, apart from how Mimi heard the audio this time."""
    lay = session.tokenizer.layout
    n = session.group_samples
    p = int(round(prompt_s / lay.group_duration_s))
    g = int(round(continue_s / lay.group_duration_s))
    ids = np.asarray(ids, dtype=np.int64)[: (p + g) * lay.group_len]
    g = ids.size // lay.group_len - p
    session.warm_up()  # a compiled step compiles here, not in the first timed group
    sampling, session.sampling = session.sampling, Sampling.greedy()
    try:
        result = run_file(session, user_wav[p * n : (p + g) * n],
                          prompt_ids=ids[: p * lay.group_len],
                          prompt_user_wav=user_wav[: p * n])  # fmt: skip
    finally:
        session.sampling = sampling
    truth = ids[p * lay.group_len :]
    got = np.concatenate([s.ids for s in result.steps])
    stored = continue_with_stored_user(session.model, lay, ids, p, g, Sampling.greedy(),
                                       session.decode)  # fmt: skip
    kinds = lay.kinds(truth.size, p * lay.group_len)
    user = kinds > lay.num_codebooks  # the user's codebooks come after the assistant's
    assistant_audio = (kinds != TEXT_KIND) & ~user

    def share(ids, where) -> float:
        return float((ids == truth)[where].mean())

    return {"assistant_codes_equal": share(got, assistant_audio),
            "text_slots_equal": share(got, kinds == TEXT_KIND),
            "user_codes_equal": share(got, user),
            "stored_assistant_codes_equal": share(stored, assistant_audio),
            "stored_text_slots_equal": share(stored, kinds == TEXT_KIND),
            "text": session.tokenizer.decode(got)[0],
            "stored_text": session.tokenizer.decode(stored)[0],
            "true_text": session.tokenizer.decode(truth)[0],
            "result": result}  # fmt: skip


# -- the notebook's live front end (anywidget: plain ES modules, no build step) ----------------

_LIVE_JS = """
const WORKLET = `
class Tap extends AudioWorkletProcessor {
  process(inputs) {
    const x = inputs[0] && inputs[0][0];
    if (x) this.port.postMessage(x.slice(0));
    return true;
  }
}
registerProcessor("speechlm-tap", Tap);`;

function b64(samples) {
  const bytes = new Uint8Array(samples.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function render({ model, el }) {
  const rate = model.get("rate"), piece = model.get("piece_samples");
  const button = document.createElement("button");
  button.className = "speechlm-live jupyter-button";
  button.textContent = "\u25cf Start live";
  const info = document.createElement("span");
  info.className = "speechlm-live-info";
  info.style.marginLeft = "8px";
  info.textContent = "live: off";
  let ctx = null, stream = null, node = null, buffer = [], filled = 0, seq = 0, next = 0;
  let dropped = 0;
  const sent = new Map(), latencies = [];
  // browsers that will not connect a microphone to a 24 kHz context (Firefox) get one at the
  // device's rate, and its blocks are resampled here (linear: enough for speech to Mimi)
  let step = 1, pos = 0, prev = 0;
  const resample = (x) => {
    if (step === 1) return x;
    const out = [];
    while (pos < x.length - 1) {
      const i = Math.floor(pos), f = pos - i, a = i < 0 ? prev : x[i];
      out.push(a + (x[i + 1] - a) * f);
      pos += step;
    }
    pos -= x.length;
    prev = x[x.length - 1];
    return Float32Array.from(out);
  };
  const release = () => {
    if (node) node.disconnect();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    node = null; stream = null;
    button.textContent = "\u25cf Start live";
  };
  const stop = () => {
    release();
    info.textContent = latencies.length ? info.textContent.replace(/^live:/, "stopped:")
      : "live: off";
    model.send({ kind: "stop" });
  };
  const push = (block) => {
    if (!stream) return;  // a block the tap posted before it was disconnected
    const x = resample(block);
    buffer.push(x); filled += x.length;
    while (filled >= piece) {
      const out = new Float32Array(piece);
      let at = 0;
      while (at < piece) {
        const head = buffer[0], take = Math.min(head.length, piece - at);
        out.set(head.subarray(0, take), at); at += take;
        if (take === head.length) buffer.shift(); else buffer[0] = head.subarray(take);
      }
      filled -= piece;
      if (sent.size >= model.get("max_in_flight")) {  // the kernel is behind: drop, don't queue
        dropped++;
        continue;
      }
      sent.set(seq, performance.now());
      model.send({ kind: "pcm", pcm: b64(out), seq: seq++ });
    }
  };
  button.onclick = async () => {
    if (stream) { stop(); return; }
    try {
      ctx = ctx || new AudioContext({ sampleRate: rate });
      await ctx.resume();
      stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true,
        noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
      let source;
      try {
        source = ctx.createMediaStreamSource(stream);
      } catch (err) {  // another rate than the device's: open the context at the device's
        await ctx.close();
        ctx = new AudioContext();
        await ctx.resume();
        source = ctx.createMediaStreamSource(stream);
      }
      step = ctx.sampleRate / rate; pos = 0; prev = 0;
      if (ctx.audioWorklet) {
        if (!ctx.speechlmTap) {
          const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
          await ctx.audioWorklet.addModule(url);
          ctx.speechlmTap = true;
        }
        node = new AudioWorkletNode(ctx, "speechlm-tap");
        node.port.onmessage = (e) => push(e.data);
      } else {  // older browsers
        node = ctx.createScriptProcessor(4096, 1, 1);
        node.onaudioprocess = (e) => push(e.inputBuffer.getChannelData(0).slice(0));
      }
      source.connect(node);
      node.connect(ctx.destination);  // keeps the graph pulling (the tap outputs silence)
      buffer = []; filled = 0; next = 0; sent.clear(); latencies.length = 0; dropped = 0;
      model.set("groups_back", 0);
      model.set("dropped", 0);
      model.set("mean_latency_ms", 0);
      model.save_changes();
      model.send({ kind: "start" });
      button.textContent = "\u25a0 Stop";
      info.textContent = "live: listening\u2026";
    } catch (err) {
      info.textContent = `microphone unavailable (${err.message}): play a file instead`;
      stream = null;
    }
  };
  model.on("msg:custom", (msg) => {
    if (msg.kind !== "pcm") {  // held, off or error: the piece is answered, its slot is free
      const current = msg.seq === null || sent.has(msg.seq);  // not from before a restart
      sent.delete(msg.seq);
      if (msg.kind === "error" && current) {  // the kernel stopped live: say why, start again
        release();
        info.textContent = `stopped: the model failed (${msg.message}); press Start live ` +
          "to begin again";
      }
      return;
    }
    if (!ctx) return;
    const raw = Uint8Array.from(atob(msg.pcm), (c) => c.charCodeAt(0));
    const samples = new Float32Array(raw.buffer);
    const audio = ctx.createBuffer(1, samples.length, rate);
    audio.copyToChannel(samples, 0);
    if (next - ctx.currentTime < 3 * audio.duration) {  // a late reply is not queued forever
      const src = ctx.createBufferSource();
      src.buffer = audio;
      src.connect(ctx.destination);
      next = Math.max(next, ctx.currentTime + 0.05);
      src.start(next);
      next += audio.duration;
    }
    const t = sent.get(msg.seq);
    if (t !== undefined) {
      latencies.push(performance.now() - t);
      sent.delete(msg.seq);
    }
    if (!latencies.length) return;
    const mean = latencies.reduce((a, b) => a + b, 0) / latencies.length;
    const last = latencies.at(-1).toFixed(0);
    info.textContent = `${stream ? "live" : "stopped"}: ${latencies.length} groups back, ` +
      `latency ${last} ms (mean ${mean.toFixed(0)} ms; ` +
      `the model's part ${msg.compute_ms.toFixed(0)} ms)` +
      (dropped ? `; ${dropped} pieces dropped: the model fell behind` : "");
    model.set("groups_back", latencies.length);
    model.set("dropped", dropped);
    model.set("mean_latency_ms", mean);
    model.save_changes();
  });
  el.append(button, info);
}
export default { render };
"""


MAX_IN_FLIGHT = 3  # live pieces sent but not answered yet; a newer one is dropped, not queued


def _live_widget_class():
    import anywidget
    import traitlets

    class LiveDuplex(anywidget.AnyWidget):
        """The microphone in 400 ms pieces to the kernel, the reply's pieces back to the
        speakers; ``groups_back`` and ``mean_latency_ms`` are what the browser measured (from
        sending a piece to receiving its reply group; what you hear lags by that, plus the
        400 ms the piece took to record, plus the playback queue). At most `MAX_IN_FLIGHT`
        pieces wait for their replies: when the kernel falls behind, the browser drops the
        newest pieces instead of queueing them (``dropped`` counts them), so the lag stays
        bounded."""

        _esm = _LIVE_JS
        rate = traitlets.Int(MIMI_SAMPLE_RATE_HZ).tag(sync=True)
        piece_samples = traitlets.Int(9600).tag(sync=True)
        groups_back = traitlets.Int(0).tag(sync=True)
        dropped = traitlets.Int(0).tag(sync=True)
        max_in_flight = traitlets.Int(MAX_IN_FLIGHT).tag(sync=True)
        mean_latency_ms = traitlets.Float(0.0).tag(sync=True)

    return LiveDuplex


LIVE_STEPS_KEPT = 150  # the last minute of a live session, for its timing figures


class DuplexWidget:
    """A duplex conversation in the notebook: **live** (the microphone streams to the kernel in
    400 ms pieces; each piece is one `DuplexSession.step` and its reply streams back) or **a
    file** played into the model, answered with the stereo result and the text channel.
    ``.widget`` is the box to display; callbacks never raise (problems become a message)."""

    def __init__(self, session: DuplexSession):
        import ipywidgets as w

        self.session = session
        self.live = _live_widget_class()(piece_samples=session.group_samples)
        self.live.on_msg(self._on_message)
        self.upload = w.FileUpload(accept="audio/*,.wav,.mp3,.m4a,.webm,.ogg,.opus,.flac",
                                   multiple=False, description="Play a file")  # fmt: skip
        self.upload.observe(self._on_upload, names="value")
        from .chat import temperature_sliders

        self.text_temperature, self.audio_temperature = temperature_sliders(session.sampling)
        self.status = w.HTML()
        self.timing = w.HTML()
        self.result = w.Output()
        self.transcript = w.HTML()
        self._pending = np.zeros(0, np.float32)
        self._live_on = False  # between a start and a stop: pieces after a stop are dropped
        self._heard, self._words = 0, ""  # groups of this live run, the model's latest words
        session.warm_up()  # a compiled decode step compiles now, not in the first live group
        self._say("Press <b>Start live</b> and talk, or play a file into the model.")
        self.widget = w.VBox([
            w.HTML("<b>Full duplex: the model listens while it talks</b>"),
            w.HBox([self.live, self.upload]),
            w.HBox([self.text_temperature, self.audio_temperature]),
            self.status, self.timing, self.result, self.transcript,
        ])  # fmt: skip

    def _sampling(self) -> Sampling:
        return replace(self.session.sampling,
                       text_temperature=self.text_temperature.value,
                       audio_temperature=self.audio_temperature.value)  # fmt: skip

    # -- live --

    def _on_message(self, _widget, content, _buffers) -> None:
        try:
            kind = content.get("kind")
            if kind == "start":
                self.session.sampling = self._sampling()
                self.session.start()
                self._pending = np.zeros(0, np.float32)
                self._heard, self._words = 0, ""
                self._live_on = True
                self._say("Live: listening.")
            elif kind == "stop":
                self._live_on = False
                self.session.close()  # Mimi's streaming state goes: the codec serves others
                heard = self.live.groups_back  # synced before the stop (one comm, in order)
                back = (f"; the browser got {heard} back, {self.live.mean_latency_ms:.0f} ms "
                        "after sending each piece on average" if heard else "")
                self._say(f"Live stopped after {self._heard} groups{back}.")
            elif kind == "pcm":
                self._on_piece(content)
        except Exception as err:  # a model error must not break the widget
            self._say(f"Could not run the live step: {escape(str(err))}", error=True)
            if content.get("kind") == "start":  # e.g. out of memory: the page stops listening
                self._live_on = False
                why = f"{type(err).__name__}: {err}"[:300]
                self.live.send({"kind": "error", "seq": None, "message": why})

    def _on_piece(self, content: dict) -> None:
        """Every piece the browser sends is answered, so it frees the piece's in-flight slot:
        with its reply groups, ``held`` (less than a group so far), ``off`` (live is off), or
        ``error``: the step failed, live stops and says why (Start live begins again)."""
        seq = content.get("seq")
        if not self._live_on:  # sent before a stop or an error reached the browser
            self.live.send({"kind": "off", "seq": seq})
            return
        try:
            steps = self.hear(np.frombuffer(base64.b64decode(content["pcm"]), np.float32), seq)
        except Exception as err:
            self._live_on = False
            self.session.close()  # Mimi's streaming state goes; nothing restarts by itself
            why = f"{type(err).__name__}: {err}"[:300]
            self._say(f"Live stopped: the model failed after {self._heard} groups ({escape(why)})."
                      " Press <b>Start live</b> to begin a new conversation.", error=True)
            self.live.send({"kind": "error", "seq": seq, "message": why})
            return
        if not steps:
            self.live.send({"kind": "held", "seq": seq})

    def hear(self, samples: np.ndarray, seq: int | None = None) -> list[GroupStep]:
        """Take microphone samples (any length); every whole 400 ms is one step, its reply
        sent back to the browser at once."""
        self._pending = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        n = self.session.group_samples
        steps = []
        while self._pending.size >= n:
            piece, self._pending = self._pending[:n], self._pending[n:]
            step = self.session.step(piece)
            del self.session.steps[:-LIVE_STEPS_KEPT]  # an hour live would keep 360 MB
            self._heard += 1
            self._words = (self._words + " " + step.text.strip())[-400:] if step.text.strip() \
                else self._words  # fmt: skip
            rms = float(np.sqrt(np.mean(np.square(piece, dtype=np.float64))))
            level = 20 * math.log10(max(rms, 1e-10))
            self._say(f"Live: {self._heard} groups heard, the last at {level:.0f} dBFS.")
            steps.append(step)
            pcm = base64.b64encode(np.asarray(step.audio, np.float32).tobytes()).decode()
            self.live.send({"kind": "pcm", "pcm": pcm, "group": step.group, "seq": seq,
                            "compute_ms": step.compute_s * 1e3})  # fmt: skip
        if steps:
            self._show_timing(self.session.steps)
            self.transcript.value = f"<p><b>model</b>: <i>{escape(self._words.strip())}</i></p>"
        return steps

    # -- a file --

    def play_file(self, name: str, data: bytes) -> DuplexResult | None:
        """Play an uploaded recording into the model (as fast as it goes) and show both
        sides in stereo with the text channel."""
        from IPython.display import Audio

        from .chat import UserInputError

        try:
            wav24 = load_user_file(name, data)
            self.session.sampling = self._sampling()
            result = run_file(self.session, wav24)
        except UserInputError as err:
            self._say(str(err), error=True)
            return None
        except Exception as err:  # a model error must not break the widget
            self._say(f"Could not run the file: {escape(str(err))}", error=True)
            return None
        self.result.outputs = ()
        self.result.append_display_data(Audio(result.stereo.T, rate=MIMI_SAMPLE_RATE_HZ))
        lines = "".join(f"<li>{t:.1f} s: {escape(words)}</li>"
                        for t, words in result.text_timeline())  # fmt: skip
        self.transcript.value = (f"<p><b>model's text channel</b> (you left, the model right):"
                                 f"</p><ul>{lines or '<li>(no words)</li>'}</ul>")
        self._show_timing(result.steps)
        self._say(f"Played {escape(name)} ({result.user.size / MIMI_SAMPLE_RATE_HZ:.1f} s) "
                  "into the model.")
        return result

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            item = files[0]
            self.play_file(item.get("name", "upload"), bytes(item["content"]))

    # -- display --

    def _show_timing(self, steps: list[GroupStep]) -> None:
        if not steps:
            return
        t = step_timing(steps, self.session.group_duration_s)
        self.timing.value = (f"<span class='speechlm-duplex-timing'>{len(steps)} groups, per "
                             f"group: listen {t['mean_encode_s'] * 1e3:.0f} ms + think and talk "
                             f"{t['mean_generate_s'] * 1e3:.0f} ms + speak "
                             f"{t['mean_decode_s'] * 1e3:.0f} ms = "
                             f"{t['mean_compute_s'] * 1e3:.0f} ms (worst "
                             f"{t['max_compute_s'] * 1e3:.0f} ms): {timing_verdict(t)}</span>")

    def _say(self, message: str, error: bool = False) -> None:
        color = "#b00020" if error else "#333"
        self.status.value = f"<span style='color:{color}' class='speechlm-status'>{message}</span>"


MAX_FILE_S = 600.0  # a duplex session is a conversation, not one question


def load_user_file(name: str, data: bytes, max_s: float = MAX_FILE_S) -> np.ndarray:
    """A recording to play into a duplex session: 24 kHz mono, or a `chat.UserInputError`
    saying what is wrong (empty, not audio, silent, longer than ``max_s``)."""
    from .chat import decode_user_audio

    return decode_user_audio(bytes(data), name, max_s)[0]


# -- the notebook's recipe: the duplex token root, its run, and what it costs -----------------

DUPLEX_USER_CODEBOOKS = 2  # the user's semantic codebook and the first acoustic one
TINY_VIDEO_S = 20.0  # tiny profile: each demo episode's first chunk (20 s)


def tokenize_config(profile: str | None = None, **overrides) -> TokenizeConfig:
    """Stage 08's token layout: the user's `DUPLEX_USER_CODEBOOKS` after the assistant's K in
    each frame. Tiny: the demo's host is the assistant (a memorised model, fed the guest's
    track, gives back the host's) over each episode's first `TINY_VIDEO_S`; full: both
    speakers in turn (``assistant="both"``: every conversation seen from both sides)."""
    tiny = resolve_profile(profile) == "tiny"
    fields = {"user_codebooks": DUPLEX_USER_CODEBOOKS, "assistant": "host" if tiny else "both"}
    if tiny:
        fields["max_video_s"] = TINY_VIDEO_S
    return TokenizeConfig.from_profile(profile, **{**fields, **overrides})


def tokens_dir(cfg) -> Path:
    """``<data>/tokens_duplex``: a token root of its own (one root holds one layout)."""
    return Path(cfg.data_dir) / "tokens_duplex"


def ensure_duplex_tokens(cfg: TokenizeConfig, models: ModelsConfig,
                         progress: bool = False) -> Path:  # fmt: skip
    """`tokens_dir`, tokenized from ``<data>/chunks`` first if it holds nothing (the tiny
    profile scrapes the demo podcast when needed), so notebook 08 runs on its own. A root
    made with another configuration than ``cfg`` (assistant, overlap, codebooks, ...) is
    refused (`preprocess.TokenRootError`), never used as if it were ``cfg``'s."""
    from .checkpoints import load_text_tokenizer
    from .preprocess import (
        LAYOUT_FILE,
        claim_token_root,
        config_digest,
        read_token_layout,
        root_spec,
        run_tokenize,
        stream_pieces,
    )
    from .scrape import ensure_chunks
    from .tokenizer import SpeechTokenizer

    root = tokens_dir(cfg)
    if (root / LAYOUT_FILE).exists():  # compare with what the root was made with
        followed = models.follow(read_token_layout(root))
        tokenizer = SpeechTokenizer.from_config(load_text_tokenizer(followed), cfg)
        claim_token_root(root, root_spec(tokenizer, followed, cfg.text_source, cfg),
                         config_digest(tokenizer, followed, cfg.text_source, cfg))  # fmt: skip
    if not stream_pieces(root):
        chunks = ensure_chunks(cfg.data_dir, cfg.profile)
        run_tokenize(cfg, models, chunks, root, progress=progress)
    return root


def run_dir(cfg) -> Path:
    """The duplex run notebook 08 trains and talks to."""
    name = "tiny-duplex" if cfg.profile == "tiny" else "mistral-7b-duplex-lora"
    return Path(cfg.data_dir) / "runs" / name


def train_config(layout, profile: str | None = None, **overrides) -> TrainConfig:
    """Stage 05's config for a duplex run: windows of whole groups (full: 4096 tokens = 51.2 s
    at 80 tokens/s; tiny: one window holding a whole 20 s demo chunk, the one it memorises),
    the user's stream conditioned on, not predicted (loss weight 0, moshi-finetune's choice;
    set a fifth loss weight to predict it as well, as J-Moshi does)."""
    cfg = TrainConfig.from_profile(profile, **overrides)
    weights = tuple(cfg.loss_weights[:4]) + (cfg.loss_weights[4:5] or (0.0,))
    if cfg.profile == "full":
        fields = {"seq_len": 4096 // layout.group_len * layout.group_len, "epochs": 2.0}
    else:  # memorise one chunk, seen whole at every step
        groups = round(TINY_VIDEO_S / layout.group_duration_s)
        fields = {"seq_len": groups * layout.group_len, "batch_size": 1, "train_chunks": 1,
                  "max_steps": 150, "eval_every": 25, "save_every": 50}
    fields["loss_weights"] = weights
    return cfg.replace(**{**fields, **overrides})


def ensure_duplex_run(cfg: TokenizeConfig, models: ModelsConfig, tokens_root: str | Path,
                      layout, progress: bool = False):  # fmt: skip
    """`run_dir`, trained on ``tokens_root`` with `train_config`'s recipe (cut to this GPU by
    `train.recipe_config`) unless it is done already (a run is resumed, a finished one trains
    no step): ``(run_dir, train_cfg, result)``. Notebook 08 and the test of its memorised
    check share it, so either one's run serves the other."""
    from . import train

    run = run_dir(cfg)
    train_cfg = train_config(layout, cfg.profile, data_dir=cfg.data_dir)
    train_cfg = train.recipe_config(train_cfg, models, run_dir=run, layout=layout)
    trainer = train.Trainer(train_cfg, models, tokens_root, run)
    try:
        result = trainer.fit(resume=True, progress=progress)
    finally:
        trainer = None  # let the model go before the caller loads the run
        train.release_memory()
    return run, train_cfg, result


def user_track(chunks_root: str | Path, tokens_root: str | Path, record: dict) -> np.ndarray:
    """The user's track under a duplex piece of ``tokens_root`` (24 kHz): its chunk's audio
    cut by the piece's turns, everyone but its assistant, with the overlap policy the root
    recorded: what stage 03 encoded for the user's positions."""
    from .preprocess import piece_audio, read_token_layout, turns_of
    from .speakers import split_tracks

    overlap = read_token_layout(tokens_root).get("overlap")
    if overlap is None:
        raise ValueError(f"{tokens_root} is not a duplex token root (its layout.json records "
                         "no overlap policy): give the root the piece comes from")  # fmt: skip
    mix = piece_audio(chunks_root, record)
    return split_tracks(mix, MIMI_SAMPLE_RATE_HZ, turns_of(record), record["role"],
                        overlap)[1]  # fmt: skip


def layout_table(text_vocab_size: int = 32000, num_codebooks: int = 4,
                 user_codebooks: tuple[int, ...] = (0, 1, 2, 4), window: int = 4096
                 ) -> list[dict]:  # fmt: skip
    """The mono layout against duplex ones with K_user user codebooks: tokens per group and
    per second, the seconds a ``window``-token context covers, and the ids in use."""
    from .tokenizer import TokenLayout

    rows = []
    for k_user in user_codebooks:
        lay = TokenLayout(text_vocab_size, num_codebooks, user_codebooks=k_user)
        rows.append({"layout": "mono" if not k_user else f"duplex, K_user={k_user}",
                     "tokens per group": lay.group_len, "tokens/s": lay.tokens_per_s,
                     "sampled per group": lay.text_slots_per_group +
                     lay.frames_per_group * num_codebooks,
                     f"{window}-token window (s)": round(window / lay.tokens_per_s, 1),
                     "vocabulary (rows)": lay.padded_vocab_size})  # fmt: skip
    return rows


def latency_plan(layout, mimi_ms: float | None = None,
                 host_forward_ms: dict | None = None) -> list[dict]:  # fmt: skip
    """What one 400 ms duplex group costs with Mistral-7B in bf16, per GPU and decode path
    (an estimate): the LM's part from `generate.realtime_plan`'s model of a step (each sampled
    position is one forward; the user's forced codes ride in the next forward with it, a pass of
    1 + K_user tokens once a frame that reads the weights once like a one-token step, compiled
    too: `generate.SHORT_RUN`; so a group costs its S + F * K sampled positions, as in the mono
    layout), what that leaves of the group for Mimi, and with ``mimi_ms`` (listening and
    speaking as measured on this machine: the same network at any LM size) the whole step."""
    from .generate import HOST_FORWARD_MS_7B, HOST_OUTSIDE_MS_7B, realtime_plan

    host = host_forward_ms or HOST_FORWARD_MS_7B
    sampled = layout.text_slots_per_group + layout.frames_per_group * layout.num_codebooks
    budget = layout.group_duration_s * 1e3
    rows = []
    for row in realtime_plan(host):
        lm_ms = sampled * (max(row["memory_ms"], host[row["decode"]]) + HOST_OUTSIDE_MS_7B)
        out = {"gpu": row["gpu"], "decode": row["decode"], "think and talk ms": round(lm_ms),
               "left for Mimi ms": max(0, round(budget - lm_ms))}  # fmt: skip
        if mimi_ms is not None:
            out["with Mimi as measured, ms"] = round(lm_ms + mimi_ms)
            out["keeps up"] = "yes" if lm_ms + mimi_ms < budget else "no"
        rows.append(out)
    return rows


def ensure_speaker_turns(chunks_root: str | Path, profile: str, device: str | None = None,
                         diarizer=None):  # fmt: skip
    """Notebook 08's speakers. The tiny profile's demo transcripts label them; YouTube audio
    (the full profile) carries none, so pyannote diarizes each video still without turns
    (`speakers.run_diarize`: resumable, needs the ``diarize`` extra and a Hub token; its
    error says what is missing). None when nothing needed it, else the summary."""
    from .config import hf_token
    from .preprocess import group_videos, list_chunk_items, video_turns
    from .speakers import Diarizer, run_diarize

    if profile != "full" or all(video_turns(video["chunks"]) for video in
                                group_videos(list_chunk_items(chunks_root))):  # fmt: skip
        return None
    return run_diarize(chunks_root, diarizer or Diarizer(hf_token(), device))


def video_with_turns(items: list[dict]) -> tuple[list[dict], list]:
    """The first video among chunk items (`preprocess.list_chunk_items`) whose chunks carry
    speaker turns: its items and its turns on its timeline; a clear error when none does."""
    from .preprocess import video_turns

    for video in dict.fromkeys(it["video_id"] for it in items):
        mine = [it for it in items if it["video_id"] == video]
        turns = video_turns(mine)
        if turns:
            return mine, turns
    raise ValueError("no scraped video has speaker turns: run `python -m speechlm_utils "
                     "diarize` (pyannote), or scrape media whose transcript labels speakers")

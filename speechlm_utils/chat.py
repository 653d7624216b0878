"""Stage 06: talk to the model: a chat session, and the notebook widget around it.

`ChatSession` keeps the conversation as one token stream: your audio (Mimi codes, with
Whisper's words in the text slots) is appended, and the model continues the stream, group by
group, after writing the text slots of your last ``text_lead_s`` itself (its first words go
there).
`ChatWidget` puts a microphone recorder (an anywidget: works in JupyterLab and Colab), a file
upload, sampling sliders, a streaming player and the transcript around it; bad input (not
audio, empty, silent, too long) gets a clear message and the widget keeps working. Its
"continue this podcast" mode prompts with the start of a tokenized chunk, like the original
demo.
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
from html import escape
from pathlib import Path

import numpy as np

from .audio import (
    MIMI_SAMPLE_RATE_HZ,
    WHISPER_SAMPLE_RATE_HZ,
    AudioDecodeError,
    load_audio,
)
from .generate import Response, Sampling, pick_decode, prompt_from_audio, respond

MAX_INPUT_S = 60.0  # longer recordings are refused (the prompt would dwarf the reply)
MIN_INPUT_S = 0.3
SILENT_DBFS = -55.0


class UserInputError(ValueError):
    """Input the user can fix; the message says how."""


def decode_user_audio(data: bytes, name: str = "recording",
                      max_s: float = MAX_INPUT_S) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Bytes of any audio file ffmpeg reads -> (24 kHz, 16 kHz) mono float32 waveforms; a
    `UserInputError` for empty, unreadable, too short, silent or longer than ``max_s``."""
    if not data:
        raise UserInputError(f"{name} is empty (0 bytes): record again or pick another file.")
    suffix = Path(name).suffix or ".bin"
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            wav24 = load_audio(tmp.name, MIMI_SAMPLE_RATE_HZ)
            wav16 = load_audio(tmp.name, WHISPER_SAMPLE_RATE_HZ)
        except AudioDecodeError as err:
            raise UserInputError(
                f"{name} is not audio that ffmpeg can read; upload a .wav, .mp3, .m4a, .webm or "
                ".ogg file.") from err  # fmt: skip
    seconds = wav24.size / MIMI_SAMPLE_RATE_HZ
    if seconds < MIN_INPUT_S:
        raise UserInputError(f"{name} is only {seconds:.2f} s long: say a little more.")
    if seconds > max_s:
        raise UserInputError(f"{name} is {seconds:.0f} s long; the limit is {max_s:.0f} s: "
                             "trim it or record a shorter one.")  # fmt: skip
    rms = float(np.sqrt(np.mean(wav24**2)))
    if 20 * math.log10(max(rms, 1e-10)) < SILENT_DBFS:
        raise UserInputError(f"{name} is silent: check the microphone and record again.")
    return wav24, wav16


def wav_bytes(audio: np.ndarray, rate: int = MIMI_SAMPLE_RATE_HZ) -> bytes:
    """16-bit PCM WAV bytes of a float waveform (for players and downloads)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class ChatSession:
    """A conversation as one token stream (see the module doc)."""

    def __init__(self, model, tokenizer, codec, aligner=None, decode: str = "auto"):
        """``decode``: how the model runs each token (`generate.pick_decode`; "auto" compiles
        the step on a CUDA GPU)."""
        self.model, self.tokenizer, self.codec, self.aligner = model, tokenizer, codec, aligner
        self.decode = pick_decode(decode, next(model.parameters()).device)
        self.reset()
        if self.decode == "compiled":
            self.warm_up()

    def warm_up(self) -> None:
        """Compile the decode step now, so the first reply does not wait for it."""
        import time

        from .generate import generate

        lay = self.tokenizer.layout
        start = time.perf_counter()
        print("compiling the one-token decode step (once per model; minutes for 7B)...")
        generate(self.model, lay, [lay.text_pad_id] * lay.group_len, 2, Sampling.greedy(),
                 decode=self.decode)  # fmt: skip
        print(f"compiled in {time.perf_counter() - start:.0f} s")

    def reset(self) -> None:
        self.ids: list[int] = []
        self.turns: list[dict] = []
        self.unanswered_s = 0.0  # the user's audio at the stream's end, not yet replied to

    def say(self, wav24: np.ndarray, wav16: np.ndarray | None = None) -> list[int]:
        """Append the user's audio (with Whisper's words when an aligner is set) to the stream."""
        words = self.aligner.align([wav16])[0] if self.aligner is not None and \
            wav16 is not None else []  # fmt: skip
        ids = prompt_from_audio(wav24, self.codec, self.tokenizer, words).tolist()
        self.ids += ids
        self.unanswered_s += len(ids) / self.tokenizer.layout.tokens_per_s
        self.turns.append({"role": "you", "audio": wav24,
                           "text": " ".join(w.text.strip() for w in words)})  # fmt: skip
        return ids

    def continue_from(self, ids, audio: np.ndarray | None = None, text: str = "") -> None:
        """Start over from given stream ids (e.g. the first seconds of a podcast chunk). Their
        text slots are kept as they are: a tokenized chunk's last slots already hold the words
        that follow it."""
        self.reset()
        self.ids = [int(i) for i in ids]
        self.turns.append({"role": "podcast", "audio": audio, "text": text})

    def reply(self, max_s: float = 10.0, sampling: Sampling | None = None,
              on_group=None, stop_silence_s: float | None = 2.0,
              open_text_s: float | None = None) -> Response:  # fmt: skip
        """The model continues the stream; its reply is appended too.

        First it writes the text slots of the user's last ``open_text_s`` (default: the
        tokenizer's ``text_lead_s``, at most as much as the unanswered audio), where its first
        words belong (see `stream_response`); the stream keeps the prompt as it completed it.
        """
        if not self.ids:
            raise UserInputError("Say something first: record or upload audio.")
        if open_text_s is None:
            open_text_s = min(self.tokenizer.text_lead_s, self.unanswered_s)
        response = respond(self.model, self.tokenizer, self.codec, self.ids, max_s, sampling,
                           stop_silence_s, on_group=on_group, open_text_s=open_text_s,
                           decode=self.decode)  # fmt: skip
        self.ids = list(response.prompt_ids) + response.ids
        self.unanswered_s = 0.0
        self.turns.append({"role": "model", "audio": response.audio, "text": response.text})
        return response


# -- front-end pieces (anywidget: plain ES modules, no build step) -------------------------------

_RECORDER_JS = """
function render({ model, el }) {
  const button = document.createElement("button");
  button.className = "speechlm-record jupyter-button";
  button.textContent = "\u25cf Record";
  const info = document.createElement("span");
  info.className = "speechlm-record-info";
  info.style.marginLeft = "8px";
  let recorder = null, parts = [], started = 0;
  button.onclick = async () => {
    if (recorder && recorder.state === "recording") { recorder.stop(); return; }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      recorder = new MediaRecorder(stream);
      parts = [];
      recorder.ondataavailable = (e) => parts.push(e.data);
      recorder.onstop = async () => {
        stream.getTracks().forEach((t) => t.stop());
        const bytes = new Uint8Array(await new Blob(parts).arrayBuffer());
        let binary = "";
        for (let i = 0; i < bytes.length; i += 0x8000) {
          binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        }
        const seconds = (Date.now() - started) / 1000;
        model.set("mime", recorder.mimeType || "audio/webm");
        model.set("duration_s", seconds);
        model.set("b64", btoa(binary));
        model.save_changes();
        button.textContent = "\u25cf Record";
        info.textContent = `recorded ${seconds.toFixed(1)} s`;
      };
      started = Date.now();
      recorder.start();
      button.textContent = "\u25a0 Stop";
      info.textContent = "recording\u2026";
    } catch (err) {
      info.textContent = `microphone unavailable (${err.message}): upload a file instead`;
      model.set("error", String(err));
      model.save_changes();
    }
  };
  el.append(button, info);
}
export default { render };
"""

_PLAYER_JS = """
function render({ model, el }) {
  let ctx = null, next = 0;
  const info = document.createElement("span");
  info.className = "speechlm-player";
  info.textContent = "\u25b6 streaming player (click anywhere in the chat once to allow sound)";
  const wake = () => {
    if (!ctx) ctx = new (window.AudioContext || window.webkitAudioContext)();
    if (ctx.state === "suspended") ctx.resume();
  };
  document.addEventListener("click", wake, { once: false });
  model.on("msg:custom", (msg) => {
    if (msg.kind === "reset") { next = 0; return; }
    if (msg.kind !== "pcm") return;
    wake();
    const raw = Uint8Array.from(atob(msg.pcm), (c) => c.charCodeAt(0));
    const samples = new Float32Array(raw.buffer);
    const buffer = ctx.createBuffer(1, samples.length, msg.rate);
    buffer.copyToChannel(samples, 0);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    next = Math.max(next, ctx.currentTime + 0.05);
    source.start(next);
    next += buffer.duration;
    info.textContent = `\u25b6 streaming: group ${msg.group + 1}`;
  });
  el.append(info);
}
export default { render };
"""


def _anywidget_classes():
    import anywidget
    import traitlets

    class MicRecorder(anywidget.AnyWidget):
        """Records from the browser's microphone; ``b64`` receives the recording."""

        _esm = _RECORDER_JS
        b64 = traitlets.Unicode("").tag(sync=True)
        mime = traitlets.Unicode("").tag(sync=True)
        duration_s = traitlets.Float(0.0).tag(sync=True)
        error = traitlets.Unicode("").tag(sync=True)

    class StreamPlayer(anywidget.AnyWidget):
        """Plays 400 ms groups as they arrive (Web Audio), so playback starts at once."""

        _esm = _PLAYER_JS

        def play(self, audio: np.ndarray, group: int, rate: int = MIMI_SAMPLE_RATE_HZ) -> None:
            pcm = base64.b64encode(np.asarray(audio, np.float32).tobytes()).decode()
            self.send({"kind": "pcm", "pcm": pcm, "rate": rate, "group": group})

    return MicRecorder, StreamPlayer


def temperature_sliders(sampling: Sampling):
    """The text and audio temperature sliders of the chat widgets, at ``sampling``'s values."""
    import ipywidgets as w

    return tuple(w.FloatSlider(value=value, min=0, max=1.5, step=0.05, description=name)
                 for name, value in (("text temp", sampling.text_temperature),
                                     ("audio temp", sampling.audio_temperature)))  # fmt: skip


class ChatWidget:
    """The chat UI over a `ChatSession`; ``.widget`` is the box to display. Callbacks call the
    session and never raise: problems become a message in ``status``."""

    def __init__(self, session: ChatSession, max_s: float = 6.0, sampling: Sampling | None = None,
                 podcast: list[dict] | None = None):  # fmt: skip
        import ipywidgets as w

        MicRecorder, StreamPlayer = _anywidget_classes()
        sampling = sampling or Sampling()
        self.session, self.podcast = session, podcast or []
        self.pending: tuple[np.ndarray, np.ndarray] | None = None
        self.recorder = MicRecorder()
        self.upload = w.FileUpload(accept="audio/*,.wav,.mp3,.m4a,.webm,.ogg,.opus,.flac",
                                   multiple=False, description="Upload audio")  # fmt: skip
        self.max_s = w.FloatSlider(value=max_s, min=0.8, max=30, step=0.4,
                                   description="reply (s)")  # fmt: skip
        self.text_temperature, self.audio_temperature = temperature_sliders(sampling)
        self.text_top_k, self.audio_top_k = (
            w.IntSlider(value=value, min=0, max=high, description=name)
            for name, value, high in (("text top-k", sampling.text_top_k, 1000),
                                      ("audio top-k", sampling.audio_top_k, 2048)))  # fmt: skip
        self.seed = w.IntText(value=0, description="seed")
        self.respond_button = w.Button(description="Respond", button_style="primary",
                                       icon="comment")  # fmt: skip
        self.reset_button = w.Button(description="New conversation", icon="refresh")
        self.status = w.HTML()
        self._say("Record or upload a question, then press <b>Respond</b>.")
        self.player = StreamPlayer()
        self.reply_audio = w.Output()
        self.transcript = w.HTML()
        self.history = w.VBox()
        self.upload.observe(self._on_upload, names="value")
        self.recorder.observe(self._on_record, names="b64")
        self.respond_button.on_click(lambda _: self.respond())
        self.reset_button.on_click(lambda _: self.reset())
        podcast_box = []
        if self.podcast:
            self.chunk = w.Dropdown(options=[(p["label"], i) for i, p in enumerate(self.podcast)],
                                    description="chunk", layout={"width": "60%"})  # fmt: skip
            self.prompt_s = w.FloatSlider(value=4.0, min=0.4, max=12.0, step=0.4,
                                          description="prompt (s)")  # fmt: skip
            self.continue_button = w.Button(description="Continue this podcast", icon="play")
            self.continue_button.on_click(lambda _: self.continue_podcast())
            podcast_box = [w.HTML("<b>Continue this podcast</b>"),
                           w.HBox([self.chunk, self.prompt_s, self.continue_button])]  # fmt: skip
        self.widget = w.VBox([
            w.HTML("<b>Talk to the model</b>"),
            w.HBox([self.recorder, self.upload]),
            w.HBox([self.max_s, self.seed]),
            w.HBox([self.text_temperature, self.audio_temperature]),
            w.HBox([self.text_top_k, self.audio_top_k]),
            w.HBox([self.respond_button, self.reset_button]),
            *podcast_box, self.status, self.player, self.reply_audio, self.transcript,
            w.HTML("<b>Conversation</b>"), self.history,
        ])  # fmt: skip

    # -- inputs --

    def load_file(self, name: str, data: bytes) -> bool:
        """Take an uploaded or recorded file as the next question; False (and a message) when
        it is not usable."""
        try:
            self.pending = decode_user_audio(bytes(data), name)
        except UserInputError as err:
            self.pending = None
            self._say(str(err), error=True)
            return False
        seconds = self.pending[0].size / MIMI_SAMPLE_RATE_HZ
        self._say(f"Got {escape(name)} ({seconds:.1f} s). Press <b>Respond</b>.")
        return True

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            item = files[0]
            self.load_file(item.get("name", "upload"), bytes(item["content"]))

    def _on_record(self, change) -> None:
        if change["new"]:
            ext = ".ogg" if "ogg" in self.recorder.mime else ".webm"
            self.load_file(f"recording{ext}", base64.b64decode(change["new"]))

    # -- actions --

    def sampling(self) -> Sampling:
        return Sampling(self.text_temperature.value, self.audio_temperature.value,
                        self.text_top_k.value, self.audio_top_k.value,
                        seed=self.seed.value)  # fmt: skip

    def respond(self) -> Response | None:
        """Answer the pending question (the Respond button)."""
        if self.pending is None:
            self._say("Record or upload a question first.", error=True)
            return None
        wav24, wav16 = self.pending
        self.pending = None
        self.session.say(wav24, wav16)
        self._add_history("you", wav24, self.session.turns[-1]["text"])
        return self._reply()

    def continue_podcast(self) -> Response | None:
        """Prompt with the start of the chosen chunk and let the model go on."""
        item = self.podcast[self.chunk.value]
        lay = self.session.tokenizer.layout
        groups = max(1, int(round(self.prompt_s.value / lay.group_duration_s)))
        ids = item["ids"][: groups * lay.group_len]
        text, codes = self.session.tokenizer.decode(ids)
        audio = item.get("audio")
        audio = audio[: int(groups * lay.group_duration_s * MIMI_SAMPLE_RATE_HZ)] if \
            audio is not None else None  # fmt: skip
        self.session.continue_from(ids, audio, text)
        self._add_history("podcast", audio, text)
        return self._reply()

    def reset(self) -> None:
        self.session.reset()
        self.pending = None
        self.history.children = ()
        self.transcript.value = ""
        self.reply_audio.outputs = ()
        self._say("New conversation.")

    def _reply(self) -> Response | None:
        self._say("Generating…")
        self.player.send({"kind": "reset"})
        try:
            response = self.session.reply(self.max_s.value, self.sampling(),
                                          on_group=lambda g: self.player.play(g["audio"],
                                                                              g["group"]))
        except Exception as err:  # a model error must not break the widget
            self._say(f"Could not generate a reply: {escape(str(err))}", error=True)
            return None
        from IPython.display import Audio

        self.reply_audio.outputs = ()
        self.reply_audio.append_display_data(Audio(wav_bytes(response.audio)))
        self.transcript.value = (f"<p><b>model</b> ({response.audio_s:.1f} s, first audio after "
                                 f"{response.first_audio_s:.2f} s, stopped on {response.stopped})"
                                 f": <i>{escape(response.text) or '(no words)'}</i></p>")
        self._add_history("model", response.audio, response.text)
        self._say(f"Replied in {response.seconds:.1f} s.")
        return response

    # -- display --

    def _say(self, message: str, error: bool = False) -> None:
        color = "#b00020" if error else "#333"
        self.status.value = f"<span style='color:{color}' class='speechlm-status'>{message}</span>"

    def _add_history(self, role: str, audio, text: str) -> None:
        import ipywidgets as w

        row = [w.HTML(f"<b>{role}</b>: <i>{escape(text) or '(no words)'}</i>")]
        if audio is not None and len(audio):
            row.append(w.Audio(value=wav_bytes(audio), format="wav", autoplay=False))
        self.history.children = (*self.history.children, w.VBox(row))


def podcast_prompts(records: list[dict], tokens_root, chunks_root, limit: int = 12) -> list[dict]:
    """Stored pieces to offer in "continue this podcast": label, ids, original audio."""
    from .preprocess import load_tokens, piece_audio

    items = []
    for r in [r for r in records if r.get("status") == "ok"][:limit]:
        path = Path(chunks_root) / r["chunk"]
        audio = piece_audio(chunks_root, r) if path.exists() else None
        items.append({"label": r["chunk"], "ids": load_tokens(tokens_root, r), "audio": audio})
    return items

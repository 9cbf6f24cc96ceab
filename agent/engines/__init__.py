"""Engines behind the interfaces in interfaces.py: speech recognition, LLM and TTS.

An engine module imports only interfaces.py, the leaf modules agent.audio / agent.clock and
its own worker-process side; it knows nothing of aiortc, turns or sessions.
agent.call.engines builds them from the configuration. Engines that burn CPU run in worker
processes shared by every call, never on the event loop.

interfaces.py        what an engine implements, and the one error they raise
pocketsphinx_asr.py  streaming ASR (live captions) with pocketsphinx, served by asr_worker.py
asr_worker.py        the streaming-ASR worker process: decoders for many calls over pipes
whisper_final.py     the accurate final pass: whisper tiny.en via CTranslate2, short window
whisper_pool.py      that pass as a shared engine: worker processes, most urgent passes first,
                     batched
whisper_worker.py    the process side of the whisper pool: load once, run passes
tts_pool.py          the TTS interface and its worker process (N syntheses at once)
tts_worker.py        the TTS worker process (piper or espeak-ng: the GPL engines live here)
worker_setup.py      what every worker does first: lower CPU priority, deaf to SIGINT,
                     gone with its server
silero_vad.py        streaming Silero VAD (ONNX), run in the server (~0.1 ms per 32 ms)
local_llm.py         the built-in responder: deterministic, instant, no model
openai_llm.py        streams replies from any OpenAI-compatible /chat/completions endpoint
sse.py               incremental Server-Sent Events parser (no I/O), for openai_llm.py
priority.py          the classes of shared-engine work, most urgent first
progress.py          a worker's CPU time, to tell busy from hung
"""

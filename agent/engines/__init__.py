"""Engines behind the interfaces in interfaces.py: speech recognition, LLM and TTS.

An engine module imports only interfaces.py, the leaf modules agent.audio / agent.clock and
its own worker-process side; it knows nothing of aiortc, turns or sessions.
agent.call.engines builds them from the configuration.

Engines that burn CPU run in worker processes shared by every call, never on the event loop:
pocketsphinx_asr.py → asr_worker.py (live captions), whisper_pool.py → whisper_worker.py
(the accurate pass, whisper_final.py), tts_pool.py → tts_worker.py (piper, espeak-ng). Each
worker starts with worker_setup.py: a lower CPU priority than the server, deaf to SIGINT, gone
with its server. silero_vad.py runs in the server (one ~0.1 ms call per 32 ms per call);
local_llm.py / openai_llm.py (+ sse.py) stream replies (their breakers are the caller's policy:
agent/conversation/breaker.py). priority.py names the classes of work the shared pools serve
most urgent first.
"""

"""ringback agent: the per-call audio pipeline.

media/ (RTP in, 16 kHz frames) → conversation/ (listener, turns) → engines/ (recognizer,
LLM, TTS) → media/ (paced frames, RTP out); call/ wires one call and holds the server-wide
pieces. audio.py, clock.py and metrics.py are leaf modules every layer may use.
"""

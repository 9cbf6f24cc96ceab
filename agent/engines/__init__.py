"""Engines behind the interfaces in interfaces.py: speech recognition, LLM and TTS.

An engine module imports only interfaces.py and the leaf modules agent.audio / agent.clock;
it knows nothing of aiortc, turns or sessions. agent.call.engines builds them from the
configuration.
"""

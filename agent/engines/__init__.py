"""Engines behind the ASR, LLM and TTS interfaces; see agent/engines/registry.py."""

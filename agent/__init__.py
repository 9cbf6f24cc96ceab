"""ringback agent: the per-call audio pipeline.

inbound audio → VAD/ASR → turns → LLM → TTS → outbound.
"""

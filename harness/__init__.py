"""Headless peer harness: a real aiortc caller that talks to the agent and measures it.

peer.py     Caller: speaks utterances to the agent, measures voice-to-voice and what it hears
cli.py      `ringback call`: a headless call, a per-turn table and p50/p90/p99
server.py   starts a real `ringback serve` on a free loopback port (tests, benchmarks)
speech.py   utterances: WAV files of any common rate, or text spoken by the embedded TTS
evalset.py  the reproducible hearing evaluation set: speech, noise, reference words
noise.py    seeded background noise, and mixing it under speech at a given SNR
impair.py   seeded in-process impairment of a peer's outgoing RTP (loss, delay, reorder)
wer.py      word error rate
"""

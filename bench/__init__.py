"""Benchmarks, run on demand (`make bench` runs each in its quick mode): each prints a table
and can write JSON (bench/results/, not committed); compare ratios within one run.

audio_path.py        receive path: ringback's jitter buffer + Opus FEC/PLC vs aiortc's own
send_path.py         CPU per 20 ms frame of the agent's voice, own Opus encoder vs aiortc's
conversation.py      voice-to-voice latency and stage times over N spoken turns, per variant
hearing.py           the evaluation set spoken to a real server: WER, v2v, false cut-offs
whisper_settings.py  whisper final-pass time and accuracy per encoder window and threads
whisper_batch.py     the shared whisper pool with 1, 4, 8 passes at once: batched vs one by one
tts_pool.py          TTS memory and first-chunk latency: N processes (an older ref) vs N slots
barge_in.py          how fast the agent stops when talked over, and whether its echo cuts it
llm_client_ttft.py   time to first token, our SSE client vs the `openai` SDK (if installed)
tool_overhead.py     what a 50 ms tool adds to voice-to-voice, next to the same turn without
                     (fake OpenAI-compatible model; agent in bench/agents/fifty_ms.py)
capacity.py          how many conversational calls one `ringback serve` sustains
soak.py              many calls and abrupt disconnects, then what the server kept (leaks)
echo_server.py       not a benchmark: the transport-only peer capacity.py compares against
"""

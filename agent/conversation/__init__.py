"""The conversation: from 16 kHz frames to the agent's spoken reply.

speech_detector.py  is this 20 ms frame the user speaking? webrtcvad, a speech model, level
endpointer.py       webrtcvad per frame and the Endpointer state machine (pure)
completeness.py     how finished do the words sound? sets the end-of-turn silence (pure)
listener.py         frames → typed turn events (speech start, partial, pause, resume, final)
turns.py            TurnManager: states, speculation commit/discard, barge-in, turn metrics
reply.py            one reply as a task: its words → TTS (read ahead) → outbound; what was heard
engine_faults.py    what a reply says when an LLM is slow or fails: timeouts, retry, fallback
breaker.py          circuit breakers and the LLM chain (primary, then fallback) they guard
chunker.py          LLM deltas → speakable clauses and sentences (pure)
history.py          what the LLM is sent: system prompt and the exchanges the user heard

Engines are reached only through interfaces: agent.engines.interfaces (ASR, LLM, TTS) and
speech_detector.SpeechModel; agent.call wires the concrete engines in.
"""

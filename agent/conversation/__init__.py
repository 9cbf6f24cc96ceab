"""The conversation: from 16 kHz frames to the agent's spoken reply.

endpointer.py  webrtcvad per frame and the Endpointer state machine (pure)
listener.py    frames → typed turn events (speech start, partial, pause, resume, final)
turns.py       TurnManager: states, the speculative Reply task, barge-in
history.py     what the LLM is sent: system prompt and the exchanges the user heard
chunker.py     LLM deltas → speakable clauses and sentences (pure)

Engines are reached only through the interfaces in agent.engines.interfaces.
"""

"""Moved to agent.conversation.breaker: a breaker is the caller's policy, not an engine.

This name stays only for signaling/__main__.py, which imports BreakerConfig from here; once
that import reads agent.conversation.breaker, delete this module.
"""

from agent.conversation.breaker import BreakerConfig

__all__ = ["BreakerConfig"]

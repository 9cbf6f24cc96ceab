"""Headless peer harness: a real aiortc caller that talks to the agent and measures it."""

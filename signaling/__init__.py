"""ringback signaling: the aiohttp server that negotiates calls and owns their lifetime.

__main__.py     the `ringback` CLI: `serve` runs the server, `call` places a headless call
config.py       CLI flags and RINGBACK_* environment variables → one typed object
app.py          create_app(config): routes, static page, lifecycle of engines and calls
guard.py        the HTTP edge: JSON errors, bearer tokens, CORS, early 413, safe logs
offer.py        POST /offer (JSON) and POST /whip (WHIP): validate, answer, explain errors
admission.py    who may open a call now: per-client offer rate, budget of pending calls (pure)
peers.py        call registry: admits offers, creates peer connections, cleans up on any exit
observe.py      GET /metrics (Prometheus text), /sessions and /sessions/{id}
workers.py      `serve --workers N`: N worker servers behind one HTTP address
agent_check.py  HAProxy agent-check responder: this server's load, one line per connection
"""

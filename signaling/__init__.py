"""ringback signaling: the aiohttp server that negotiates calls and owns their lifetime."""

"""Fakes for tests and benchmarks, importable by both: an OpenAI-compatible
server that speaks the real wire format and injects faults, a llama-server
stand-in, and a server that replays recorded provider streams.

May import: nothing of batchgen but itself.
"""

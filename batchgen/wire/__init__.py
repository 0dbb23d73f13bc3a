"""One streamed attempt on the wire: the stream, the SSE decoder, the chunk
reader, the retry classifier and its tenacity policy, the idle watchdog.

May import: errors, secrets, jsonfast.
"""

"""How fast to go: streams in flight (AIMD), RPM/TPM pacing, the pause after a
429; in one process (``gate``) or shared through Redis (``redis_gate``), behind
the same methods.

May import: errors.
"""

"""The provider's Batch API: files and batches through the openai SDK, and
which models it cannot take.

May import: jobs, errors.
"""

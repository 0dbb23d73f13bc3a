"""The job file, from text to requests: its schema (what users write), the YAML
loader with line marks, the sources (job file, prompts_file, ``data:`` rows
through a ``template:``), answer schemas and their modes, ``file://`` media,
ids, problems
with file:line:key, the endpoint's continuation form, the validation record
and the plan spool. Nothing here writes a run directory.

May import: llama (the local model's name), store (its records), errors,
secrets, jsonfast.
"""

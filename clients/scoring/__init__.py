"""Pieces of the batch offline scorer (``python -m clients.score``).

- :mod:`.inputs`: lazy input streams (list file, directory, glob) with a stable ordinal per item.
- :mod:`.ledger`: the compact set of inputs already scored, rebuilt from the output on resume.
- :mod:`.outputs`: append-only JSONL / CSV / Parquet(-journal) writers with torn-tail repair.
- :mod:`.retry`: which failures are transient, and the capped exponential backoff with jitter.
- :mod:`.storage`: inputs in object stores or behind HTTP (fsspec), read in bounded chunks with retries.
- :mod:`.shards`: ``--shard I/N``, the slice of the input one of N scorers takes.
- :mod:`.merge`: shard outputs combined into one, with the inputs missing or doubled reported.
- :mod:`.endpoints`: a pool of Triton endpoints with least-loaded / round-robin choice, cool-off and probing.
"""

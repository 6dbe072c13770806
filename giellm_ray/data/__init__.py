"""Dataset builders: turn raw corpora into GIELLM Parquet (``giellm_ray.schema.DATASET_SCHEMA``).

- :mod:`~giellm_ray.data.scnm`: SCNM from Stockmark's ``ner.json`` + a user-given TL label file.
- :mod:`~giellm_ray.data.scpos`: SCPOS:RW/N/Adj/N&Adj from any (text, sentiment) table, streamed.
- :mod:`~giellm_ray.data.authors`: the authors' released CSV/JSON files, inventories learned.
- :mod:`~giellm_ray.data.mix`: the paper's 4,500-row training mix, splits, single-task corpora.

Run them through ``giellm data scnm|scpos|authors|mix`` (:mod:`giellm_ray.data.cli`). Importing
this package imports nothing heavy.
"""

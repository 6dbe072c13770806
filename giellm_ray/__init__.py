"""giellm-ray: GIELLM, the Japanese general information-extraction LLM, on Ray.

Layers (see README): ``formats``, ``metrics`` and ``decoding`` are pure; ``data`` builds Parquet
corpora; ``model`` knows torch/transformers; ``generation`` (engines, constraint adapters, the
extractor) is the Ray-free generation core; ``train``, ``score`` and ``serve`` are the only places
that import Ray's libraries; ``cli`` is the single ``giellm`` command that ``jobs/*.py`` reuse.
"""

__version__ = "0.1.0"

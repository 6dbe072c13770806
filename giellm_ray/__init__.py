"""giellm-ray: GIELLM, the Japanese general information-extraction LLM, on Ray.

Layers (see README): ``formats`` and ``metrics`` are pure; ``data`` builds Parquet corpora;
``model`` knows torch/transformers; ``train``, ``infer`` and ``serve`` are the only places that
import Ray; ``cli`` is the single ``giellm`` command that ``jobs/*.py`` reuse.
"""

__version__ = "0.1.0"

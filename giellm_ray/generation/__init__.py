"""The generation core: engines, constraint adapters and the extractor, with no Ray in sight.

Bulk scoring (``giellm_ray.score``), serving (``giellm_ray.serve``) and training evaluation
(``giellm_ray.train.evaluation``) all generate through this package, so prompt building,
decoding, parsing and grounding are the same whichever path runs. ``base`` holds the request,
result and statistics types every engine speaks; ``hf`` is our greedy continuous-batching loop
over a Hugging Face causal LM (laptops, CI, training evaluation); ``masks`` turns the format
constraint's allowed-token sets into logits masks; ``extractor`` is the row-level contract
(rows in, scored columns out) on top of an engine.
"""

"""The generation core: engines, constraint adapters and the extractor, with no Ray in sight.

Bulk scoring (``giellm_ray.score``), serving (``giellm_ray.serve``) and training evaluation
(``giellm_ray.train.evaluation``) all generate through this package, so prompt building,
decoding, parsing and grounding are the same whichever path runs. ``base`` holds the request,
result and statistics types every engine speaks; ``hf`` is our greedy continuous-batching loop
over a Hugging Face causal LM (laptops, CI, training evaluation); ``vllm_engine`` runs vLLM's
async engine (the GPU engine of scoring and serving), which applies the format constraint as
vLLM's own structured outputs (a per-row llguidance grammar); ``masks`` turns the automaton's
allowed-token sets into logits masks for the HF engine; ``extractor`` is the row-level contract (rows in, scored columns out)
on top of any engine, and ``build`` picks the engine from a config (``engine: hf | vllm``).
"""

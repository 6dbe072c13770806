"""LoRA adapters on one base model: their names and sources, and the HF engine that groups rows.

A score or serve config names its adapters (``adapters: {name: path}``, a PEFT adapter directory:
``adapter_config.json`` + ``adapter_model.safetensors``, local or ``s3://``); a row picks one by
its ``adapter`` column (a request by its ``adapter`` field), null for the base model.

- :func:`check_adapter_map` validates the mapping (configs call it); :func:`localize_adapters`
  turns ``s3://`` sources into node-local directories with the models' one-download-per-node
  cache (``giellm_ray.model.cache.localize``: the first process on a node downloads, the others
  wait on its lock and reuse it), and checks each directory is a PEFT adapter.
- :func:`adapter_problem` is the row error of an adapter name the engine does not hold (the
  Extractor writes it into that row's ``error``; the service answers 422 before that).
- :class:`PeftAdapterEngine` is the HF engine with adapters: every adapter is loaded once into
  one ``PeftModel`` (``load_adapter(path, adapter_name=name)``; the LoRA layers are injected into
  the base model in place, so the base weights are held once), and ``generate`` runs the rows of
  each adapter as one group through the unchanged :class:`~giellm_ray.generation.hf.HFEngine`
  (``set_adapter(name)``; base rows under ``disable_adapter()``). Groups run one after another:
  a batch of 256 rows over 4 adapters decodes as 4 batches of ~64 (``benchmarks/lora_scoring.py``
  measures what that costs against one adapter and against a merged model). vLLM instead serves
  every adapter in one continuous batch (``vllm_engine``: a ``LoRARequest`` per row).

Arithmetic, 13B (Llama-2-13B: 40 layers, width 5120, MLP 13824) with r=16 adapters: a LoRA pair
on a ``d_in -> d_out`` projection holds ``r * (d_in + d_out)`` parameters. On q/k/v/o that is 16 x
10,240 x 4 = 655k per layer, 26.2M for the model: 52 MB in bf16; on every linear layer (q, k, v,
o, gate, up, down: + 3 x 16 x 18,944) 62.6M: 125 MB. So 7 adapters (one mixed model and one per
dataset, as ``giellm mre`` trains) are 0.4-0.9 GB beside the base's 26 GB on one GPU, where 7
merged models would be 7 x 26 GB = 182 GB of weights (7 engines, 3 GPUs' worth). An 8-GPU node
downloads each adapter once (52-125 MB), not once per actor or replica. KV cache and activations
are the base model's: unchanged per row. The extra compute per token is ``2 r (d_in + d_out)``
FLOPs per adapted projection, 2 x 62.6M = 0.13 GFLOP/token for all-linear r=16 against 26 GFLOP
for the base: 0.5%.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Collection, Mapping

from giellm_ray.generation.base import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")


def check_adapter_map(adapters: Mapping[str, str]) -> dict[str, str]:
    """``adapters`` checked (names: letters, digits, ``._:+-``, up to 128; sources non-empty)."""
    out: dict[str, str] = {}
    for name, source in adapters.items():
        if not NAME_RE.fullmatch(name):
            raise ValueError(
                f"adapter name {name!r}: use letters, digits and . _ : + - "
                "(starting with a letter or digit, at most 128 characters)"
            )
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"adapter {name!r}: the source must be a directory or s3:// URI")
        out[name] = source
    return out


def adapter_problem(name: object, known: Collection[str]) -> str | None:
    """The row error for ``name`` (a row's ``adapter``), or ``None`` when the engine holds it
    (``None`` itself: the base model)."""
    if name is None or (isinstance(name, str) and name in known):
        return None
    listed = ", ".join(sorted(known)) if known else "none (the config names no adapters)"
    shown = repr(name if len(str(name)) <= 60 else str(name)[:60] + "...")
    return f"unknown adapter {shown}; known adapters: {listed}"


def read_adapter_config(path: str) -> dict:
    """The adapter's ``adapter_config.json``; ``FileNotFoundError`` when ``path`` is not one."""
    file = os.path.join(path, ADAPTER_CONFIG)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"not a PEFT adapter directory (no {ADAPTER_CONFIG}): {path}")
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def localize_adapters(adapters: Mapping[str, str]) -> dict[str, str]:
    """``{name: local directory}``: ``s3://`` sources downloaded once per node, every directory
    checked to be a PEFT adapter (LoRA)."""
    from giellm_ray.model.cache import localize

    local = {}
    for name, source in check_adapter_map(adapters).items():
        path = os.path.expanduser(localize(source))
        peft_type = read_adapter_config(path).get("peft_type", "LORA")
        if str(peft_type).upper() != "LORA":
            raise ValueError(
                f"adapter {name!r} ({source}) is a {peft_type} adapter; only LoRA "
                "adapters are served"
            )
        local[name] = path
    return local


def adapter_rank(path: str) -> int:
    """The largest LoRA rank of an adapter (its ``r``, or any per-module ``rank_pattern``)."""
    cfg = read_adapter_config(path)
    ranks = [int(cfg.get("r", 8)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


class PeftAdapterEngine:
    """The HF engine over one ``PeftModel`` holding every adapter; rows grouped by adapter.

    ``stats``, ``max_positions`` and the decode loop are the wrapped
    :class:`~giellm_ray.generation.hf.HFEngine`'s; ``adapter_names`` lists the adapters it holds.
    """

    def __init__(self, model, tokenizer, gen_cfg, adapters: Mapping[str, str]) -> None:
        from peft import PeftModel

        from giellm_ray.generation.hf import HFEngine

        if not adapters:
            raise ValueError("PeftAdapterEngine needs at least one adapter")
        names = list(adapters)
        peft_model = PeftModel.from_pretrained(
            model, adapters[names[0]], adapter_name=names[0], is_trainable=False
        )
        for name in names[1:]:
            peft_model.load_adapter(adapters[name], adapter_name=name, is_trainable=False)
        self.peft_model = peft_model.eval()
        self.adapter_names = tuple(names)
        # The transformers model with the LoRA layers in place: the active adapter applies.
        self.inner = HFEngine(peft_model.get_base_model(), tokenizer, gen_cfg)
        self.max_positions = self.inner.max_positions
        self._lock = threading.Lock()  # the active adapter is model state: one group at a time
        log.info("HF engine with %d adapter(s): %s", len(names), ", ".join(names))

    @property
    def stats(self):
        return self.inner.stats

    def reset_stats(self) -> None:
        self.inner.reset_stats()

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Every request completed with its own adapter (base for ``None``), results in order."""
        groups: dict[str | None, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.adapter, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        with self._lock:
            for name, idx in groups.items():
                for i, res in zip(
                    idx, self._generate_group(name, [requests[i] for i in idx]), strict=True
                ):
                    results[i] = res
        return results  # type: ignore[return-value]

    def _generate_group(
        self, name: str | None, group: list[GenerationRequest]
    ) -> list[GenerationResult]:
        problem = adapter_problem(name, self.adapter_names)
        if problem is not None:
            return [GenerationResult("", 0, False, problem) for _ in group]
        if name is None:
            with self.peft_model.disable_adapter():
                return self.inner.generate(group)
        self.peft_model.set_adapter(name)
        return self.inner.generate(group)


# -- vLLM: one LoRARequest per row --------------------------------------------------------------

BASE_SLOT_NAME = "_giellm_base"  # the CPU identity adapter; user names start with a letter/digit


def identity_adapter(template: str) -> str:
    """A node-local copy of ``template`` with every weight zero (its LoRA delta is exactly 0),
    written once per node (the model cache's lock) and reused.

    Why: vLLM's CPU LoRA kernels (``vllm/lora/ops/torch_ops``: ``lora_b_weights[indices]``, the
    same in 0.29 and 0.32) read a row without an adapter (index -1) as the *last* slot, so in a
    batch that also holds adapter rows a base row is decoded with whichever adapter sits there
    (measured on the tiny model: base rows came back with adapter ``b``'s tokens). On CPU base
    rows therefore carry this identity adapter; the GPU kernels skip index -1 and base rows carry
    no LoRARequest.
    """
    import hashlib
    import shutil
    import uuid

    from safetensors.torch import load_file, save_file

    from giellm_ray.model.cache import MARKER, is_complete, model_cache_dir, node_lock

    weights = os.path.join(template, "adapter_model.safetensors")
    st = os.stat(weights)
    key = hashlib.sha1(f"{os.path.abspath(template)}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = model_cache_dir()
    target = os.path.join(cache, "identity-adapter-" + key.hexdigest()[:16])
    if is_complete(target):
        return target
    os.makedirs(cache, exist_ok=True)
    with node_lock(target + ".lock"):
        if not is_complete(target):
            tmp = f"{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.makedirs(tmp)
            try:
                save_file(
                    {k: v.zero_() for k, v in load_file(weights).items()},
                    os.path.join(tmp, "adapter_model.safetensors"),
                )
                shutil.copy(os.path.join(template, ADAPTER_CONFIG), tmp)
                with open(os.path.join(tmp, MARKER), "w") as f:
                    json.dump({"identity_of": template}, f)
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return target


def vllm_lora_setup(
    adapters: Mapping[str, str] | None, cfg, on_gpu: bool
) -> tuple[tuple[str, ...], dict, dict]:
    """``(adapter names, {row adapter (None: base) -> LoRARequest or None}, engine keywords)``
    for a :class:`~giellm_ray.generation.vllm_engine.VLLMEngine` (``cfg``: its ``VLLMConfig``)."""
    local = localize_adapters(adapters or {})
    if not local:
        return (), {None: None}, cfg.lora_kwargs(0, 0)
    from vllm.lora.request import LoRARequest

    requests: dict = {
        name: LoRARequest(name, k + 1, path) for k, (name, path) in enumerate(local.items())
    }
    requests[None] = None
    if not on_gpu:
        requests[None] = LoRARequest(
            BASE_SLOT_NAME, len(local) + 1, identity_adapter(next(iter(local.values())))
        )
    slots = len(local) + (not on_gpu)
    kw = cfg.lora_kwargs(slots, max(adapter_rank(p) for p in local.values()))
    return tuple(local), requests, kw

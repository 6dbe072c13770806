"""Greedy batched generation with a KV cache and continuous batching (finished slots refilled).

``HFEngine(model, tokenizer, config).generate(requests)`` decodes a list of
:class:`GenerationRequest` greedily and returns one :class:`GenerationResult` per request, in order.
Rows are sorted by prompt length and prefilled in groups of similar length (little padding); up to
``batch_size`` rows decode together over one ``DynamicCache``. When enough rows have finished
(EOS, ``max_new_tokens``, or their constraint is done) they are evicted from the cache and the next
rows are prefilled and merged in (left-padded, with a 2-D attention mask and explicit position ids),
so decode steps are not spent on finished rows.

Admission by KV bytes, not rows alone: the cache is one rectangle, every row padded to the
longest, growing one column per step. A group of rows is admitted only while ``rows x (widest
prompt or running row + longest remaining token budget) x KV bytes per token`` (layers x KV heads
x head_dim x 2 x dtype bytes, from the model config) stays within the budget
(``GenerationConfig.kv_budget_bytes``, or a share of the free CUDA memory; the 13B arithmetic is
in ``GenerationConfig``), so the cache never outgrows it; ``batch_size`` stays the row cap. The
first row of an empty batch is always admitted (if it alone does not fit, the OOM retry below
still ends it).

Why our own loop rather than transformers' ``generate_batch`` (its continuous-batching API):
constrained decoding needs a per-row logits mask and stop signal before every pick, which
``generate_batch`` has no hook for (``docs/decisions/hf-engine-own-loop.md``).

Per-row constraints (``giellm_ray.decoding.base.RowConstraint``): before each pick the row's logits
are masked to ``allowed_tokens()``; ``advance(tok)`` follows; ``is_done()`` ends the row, and the
EOS it would write next is counted (``generation.base``: the token-count contract). Rows
without a constraint take a vectorised ``argmax`` with no per-row Python work. An exception inside
a batch never escapes: the rows are retried one at a time and a row that still fails gets
``error``. ``engine.stats`` holds prompt-padding and finished-slot counters.

A request with ``scores=True`` also gets ``token_ids`` and ``token_logprobs``: the log-softmax of
the masked logits at each chosen token (the probability under the constraint), computed as that
logit minus the row's logsumexp in the same step, one reduction over ``[rows, vocab]`` and no extra
host sync beyond the pick's.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from giellm_ray.generation.base import EngineStats, GenerationRequest, GenerationResult
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.generation.masks import MaskCache


@dataclass
class _Batch:
    """The rows decoding together: request indices, outputs so far, cache and mask."""

    rows: list[int] = field(default_factory=list)
    out: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)  # per out token, rows with scores
    done: list[bool] = field(default_factory=list)
    scored: bool = False  # a row of the batch asked for scores
    cache: object = None
    mask: object = None  # [B, L] long, 1 = real token
    pos: object = None  # [B] next position id
    last: object = None  # [B] last token id


def kv_bytes_per_token(model) -> int | None:
    """KV-cache bytes one token takes in every layer (K and V), from the model config; ``None``
    where the config does not say (the engine then bounds rows only)."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def first(*names):
        for name in names:
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    layers = first("num_hidden_layers", "n_layer", "num_layers")
    heads = first("num_attention_heads", "n_head")
    kv_heads = first("num_key_value_heads", "multi_query_group_num") or heads
    hidden = first("hidden_size", "n_embd", "d_model")
    head_dim = first("head_dim") or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        return None
    itemsize = next(model.parameters()).element_size()
    return layers * kv_heads * head_dim * 2 * itemsize


def cache_keyword(model) -> str:
    """The name ``model.forward`` gives its KV cache, in and out: ``cache`` (transformers 5.24 and
    later) or ``past_key_values`` (up to 5.23; vLLM 0.32 caps transformers below 5.20).

    Asked of the signature, not assumed from a version: ``forward`` takes ``**kwargs``, so a wrong
    name is accepted and dropped, and the engine would decode every step without its cache.
    """
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`: "
        "the HF engine decodes over a KV cache and needs one of them"
    )


def model_max_positions(model, tokenizer) -> int:
    """The longest sequence (prompt + output) the model accepts, in tokens."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(getattr(tokenizer, "model_max_length", 2048) or 2048)


class HFEngine:
    """Greedy continuous-batching generator over a Hugging Face causal LM."""

    def __init__(self, model, tokenizer, config: GenerationConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        self.device = self.config.device or str(next(model.parameters()).device)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stats = EngineStats()
        self.masks = MaskCache(fallback_id=min(self.eos_ids, default=0))
        self.max_positions = model_max_positions(model, tokenizer)  # prompt + output, tokens
        self.kv_per_token = kv_bytes_per_token(model)
        self.cache_kw = cache_keyword(model)
        self.kv_budget: int | None = None  # bytes, set per generate call (see kv_budget_bytes)

    def reset_stats(self) -> None:
        self.stats = EngineStats()

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Complete every request; never raises (a failing row gets ``error``)."""
        results: list[GenerationResult | None] = [None] * len(requests)
        touched: set[int] = set()
        self.kv_budget = self._kv_budget()
        try:
            self._run(list(range(len(requests))), requests, results, touched)
        except Exception as exc:  # one bad batch must not fail the job: retry row by row
            for i, req in enumerate(requests):
                if results[i] is not None:
                    continue
                if req.constraint is not None and i in touched:
                    # Its constraint already consumed tokens; the caller may retry with a fresh one.
                    results[i] = self._failed(f"engine error: {type(exc).__name__}: {exc}")
                    continue
                try:
                    self._run([i], requests, results, touched)
                except Exception as row_exc:
                    results[i] = self._failed(f"engine error: {type(row_exc).__name__}: {row_exc}")
        return results  # type: ignore[return-value]

    def _kv_budget(self) -> int | None:
        """The KV-cache byte budget of this call: the configured one, else a share of the free
        CUDA memory (memory PyTorch caches but does not use counts as free); ``None``: rows only."""
        if self.kv_per_token is None:
            return None
        if self.config.kv_budget_bytes is not None:
            return self.config.kv_budget_bytes
        import torch

        device = torch.device(self.device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + cached) * self.config.kv_memory_fraction)

    def _kv_fit(self, b: _Batch, pending: deque, prompt_ids, limits, room: int) -> int:
        """How many of the next pending rows (at most ``room``) may join the batch's running rows
        with the cache's peak (rows x (width + longest remaining budget)) within the budget."""
        room = min(room, len(pending))
        if self.kv_budget is None:
            return room
        cells = self.kv_budget // self.kv_per_token  # cache positions (row x column) allowed
        alive = width = rest = 0
        for s, row in enumerate(b.rows):
            if not b.done[s]:
                alive += 1
                width = max(width, len(prompt_ids[row]) + len(b.out[s]))
                rest = max(rest, limits[row] - len(b.out[s]))
        k = 0
        for i in pending:
            if k == room:
                break
            width = max(width, len(prompt_ids[i]))
            rest = max(rest, limits[i])
            if (alive + k + 1) * (width + rest) > cells:
                break
            k += 1
        return k if k or alive else 1  # an empty batch always takes one row

    def _failed(self, message: str) -> GenerationResult:
        self.stats.errors += 1
        return GenerationResult("", 0, False, message)

    # -- the decode loop ------------------------------------------------------------------------

    def _run(self, idx: list[int], requests, results, touched: set[int]) -> None:
        import torch

        prompt_ids = {i: requests[i].prompt_ids for i in idx if requests[i].prompt_ids}
        todo = [i for i in idx if i not in prompt_ids]
        if todo:
            ids = self.tokenizer([requests[i].prompt for i in todo], add_special_tokens=True)[
                "input_ids"
            ]
            prompt_ids.update(zip(todo, ids, strict=True))
        limits = {}
        for i in idx:
            limit = requests[i].max_new_tokens
            if self.config.max_new_tokens is not None:
                limit = min(limit, self.config.max_new_tokens)
            limits[i] = max(0, int(limit))
        for i in idx:
            if limits[i] == 0:
                results[i] = GenerationResult("", 0, False)
        pending = deque(sorted((i for i in idx if limits[i] > 0), key=lambda i: len(prompt_ids[i])))
        b = _Batch()
        size = self.config.batch_size
        threshold = max(1, math.ceil(self.config.refill_threshold * size))
        blocked = None  # the batch state at which the KV budget last admitted nothing
        with torch.inference_mode():
            while True:
                n_done = sum(b.done)
                alive = len(b.rows) - n_done
                if pending and (alive == 0 or size - alive >= threshold):
                    state = (len(b.rows), n_done)
                    fit = (
                        0
                        if state == blocked
                        else self._kv_fit(b, pending, prompt_ids, limits, size - alive)
                    )
                    # A refill waits until a useful group fits: ``refill_threshold`` of the
                    # batch it makes (the budget may hold fewer rows than ``batch_size``).
                    need = min(
                        threshold,
                        len(pending),
                        math.ceil(self.config.refill_threshold * (alive + fit)),
                    )
                    if alive == 0 or (fit > 0 and fit >= need):
                        blocked = None
                        self._evict(b, requests)
                        self._admit(b, pending, fit, prompt_ids, limits, requests, results, touched)
                        continue
                    blocked = state
                if n_done >= threshold and alive > 0 and (not pending or blocked is not None):
                    self._evict(b, requests)  # finished rows leave; a refill waits for the budget
                    blocked = None
                    continue
                if alive == 0:
                    break
                self._decode_step(b, limits, requests, results, touched)

    def _finish(
        self, b: _Batch, slot: int, requests, results, finished: bool, forced_eos: bool = False
    ) -> None:
        b.done[slot] = True
        i = b.rows[slot]
        toks = [t for t in b.out[slot] if t not in self.eos_ids]
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        n = len(b.out[slot]) + forced_eos  # the EOS a done constraint forces counts (base.py)
        results[i] = GenerationResult(text, n, finished)
        if requests[i].scores:
            results[i].token_ids = toks
            results[i].token_logprobs = [
                lp
                for t, lp in zip(b.out[slot], b.logprobs[slot], strict=True)
                if t not in self.eos_ids
            ]
        self.stats.rows += 1
        self.stats.generated_tokens += n

    def _pick(
        self, logits, slots: list[int], b: _Batch, requests, touched: set[int]
    ) -> tuple[list[int], list[float] | None]:
        """Greedy token per slot (``logits`` rows align with ``slots``), constraints applied, and
        its log-probability under the masked logits where a row asked for scores (else None)."""
        import torch

        allowed: list = [None] * len(slots)
        for k, s in enumerate(slots):
            c = requests[b.rows[s]].constraint
            if c is not None and not b.done[s]:
                allowed[k] = c.allowed_tokens()
                touched.add(b.rows[s])
        masked = self.masks.apply(logits, allowed)
        top, best = masked.max(dim=-1)  # the greedy pick and its logit, one reduction
        if not b.scored:
            return best.tolist(), None
        # log_softmax at the chosen token only: its logit minus the masked row's logsumexp.
        lp = top.float() - torch.logsumexp(masked.float(), dim=-1)
        return best.tolist(), lp.tolist()

    def _record(
        self, b: _Batch, slot: int, tok: int, lp: float | None, limits, requests, results
    ) -> None:
        b.out[slot].append(tok)
        if lp is not None:
            b.logprobs[slot].append(lp)
        c = requests[b.rows[slot]].constraint
        is_eos = tok in self.eos_ids
        if c is not None and not is_eos:
            c.advance(tok)
        room = len(b.out[slot]) < limits[b.rows[slot]]
        if is_eos:
            self._finish(b, slot, requests, results, finished=True)
        elif c is not None and c.is_done():
            # Only EOS may follow: it is not decoded, but it needs a slot in the budget (as in
            # vLLM, which must write it); without one the budget cut the row.
            self._finish(b, slot, requests, results, finished=room, forced_eos=room)
        elif not room:
            self._finish(b, slot, requests, results, finished=False)

    def _decode_step(self, b: _Batch, limits, requests, results, touched) -> None:
        import torch

        ones = torch.ones((len(b.rows), 1), dtype=b.mask.dtype, device=b.mask.device)
        b.mask = torch.cat([b.mask, ones], dim=1)
        out = self.model(
            input_ids=b.last[:, None],
            attention_mask=b.mask,
            position_ids=b.pos[:, None],
            use_cache=True,
            **{self.cache_kw: b.cache},
        )
        b.cache = getattr(out, self.cache_kw)
        slots = list(range(len(b.rows)))
        toks, lps = self._pick(out.logits[:, -1, :], slots, b, requests, touched)
        self.stats.decode_steps += 1
        self.stats.decode_slot_steps += len(slots)
        self.stats.finished_slot_steps += sum(b.done)
        for s, tok in zip(slots, toks, strict=True):
            if not b.done[s]:
                self._record(b, s, tok, lps[s] if lps else None, limits, requests, results)
        b.last = torch.as_tensor(toks, dtype=torch.long, device=b.last.device)
        b.pos = b.pos + 1

    def _evict(self, b: _Batch, requests) -> None:
        """Drop finished rows from the batch and cache; trim all-padding leading columns."""
        import torch

        keep = [s for s, d in enumerate(b.done) if not d]
        if len(keep) == len(b.rows):
            return
        self.stats.refills += 1
        b.rows = [b.rows[s] for s in keep]
        b.out = [b.out[s] for s in keep]
        b.logprobs = [b.logprobs[s] for s in keep]
        b.scored = any(requests[i].scores for i in b.rows)
        b.done = [False] * len(keep)
        if not keep:
            b.cache = b.mask = b.pos = b.last = None
            return
        sel = torch.as_tensor(keep, dtype=torch.long, device=b.mask.device)
        b.mask, b.pos, b.last = b.mask[sel], b.pos[sel], b.last[sel]
        lead = int((b.mask.cumsum(dim=1) == 0).sum(dim=1).min())  # columns padding for every row
        b.mask = b.mask[:, lead:]
        for layer in b.cache.layers:
            layer.keys = layer.keys[sel, :, lead:]
            layer.values = layer.values[sel, :, lead:]

    def _admit(
        self, b: _Batch, pending: deque, free: int, prompt_ids, limits, requests, results, touched
    ) -> None:
        """Prefill the next rows (shortest prompts first, at most ``free``) and merge them in."""
        import torch
        from transformers import DynamicCache

        take: list[int] = []
        real = 0
        while pending and len(take) < free:
            n = len(prompt_ids[pending[0]])
            width = max(n, *(len(prompt_ids[i]) for i in take)) if take else n
            cells = width * (len(take) + 1)
            # A group stops where it would pad too much or grow too big; the next group follows
            # at once (the refill check in ``_run`` still sees free slots).
            if take and (
                cells > self.config.max_prefill_tokens
                or 1 - (real + n) / cells > self.config.max_prefill_padding
            ):
                break
            take.append(pending.popleft())
            real += n
        width = max(len(prompt_ids[i]) for i in take)
        input_ids = torch.full((len(take), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(take), width), dtype=torch.long)
        for k, i in enumerate(take):
            p = prompt_ids[i]
            input_ids[k, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
            mask[k, width - len(p) :] = 1
            self.stats.prompt_tokens += len(p)
            self.stats.prompt_pad_tokens += width - len(p)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: DynamicCache()},
        )
        new_last = pos[:, -1] + 1
        self._merge(b, take, getattr(out, self.cache_kw), mask, new_last)
        b.scored = b.scored or any(requests[i].scores for i in take)
        first = len(b.rows) - len(take)
        slots = list(range(first, len(b.rows)))
        toks, lps = self._pick(out.logits[:, -1, :], slots, b, requests, touched)
        for k, (s, tok) in enumerate(zip(slots, toks, strict=True)):
            self._record(b, s, tok, lps[k] if lps else None, limits, requests, results)
        b.last[first:] = torch.as_tensor(toks, dtype=torch.long, device=b.last.device)

    def _merge(self, b: _Batch, take: list[int], cache, mask, pos) -> None:
        import torch

        n = len(take)
        last = torch.full((n,), self.pad_id, dtype=torch.long, device=mask.device)
        if not b.rows:
            b.rows, b.out, b.done = list(take), [[] for _ in take], [False] * n
            b.logprobs = [[] for _ in take]
            b.cache, b.mask, b.pos, b.last = cache, mask, pos, last
            return
        old_len, new_len = b.mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)

        def left_pad(t, extra: int, dim: int):
            if extra == 0:
                return t
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)

        for old, new in zip(b.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat(
                [left_pad(old.keys, width - old_len, 2), left_pad(new.keys, width - new_len, 2)],
                dim=0,
            )
            old.values = torch.cat(
                [
                    left_pad(old.values, width - old_len, 2),
                    left_pad(new.values, width - new_len, 2),
                ],
                dim=0,
            )
        b.mask = torch.cat(
            [left_pad(b.mask, width - old_len, 1), left_pad(mask, width - new_len, 1)], dim=0
        )
        b.pos = torch.cat([b.pos, pos])
        b.last = torch.cat([b.last, last])
        b.rows += take
        b.out += [[] for _ in take]
        b.logprobs += [[] for _ in take]
        b.done += [False] * n

"""PyTorch twin of npllm.generation (lesson 05): the seed's section 4.1 loop, filled in.

Used only by tests.  It works on ``reference.model.CausalLM`` (or anything with
``forward(input_ids, attention_mask, past_key_values, use_cache) -> (logits, past)``)
and keeps the seed's concatenating cache: every step feeds only the new token
and the cache returned by the model grows by one position.

Left padding, EOS and padding of finished rows follow HF ``generate``.
Sampling uses ``torch.multinomial``, so only greedy output is expected to be
token-identical to npllm.
"""

from typing import Optional

import torch
import torch.nn.functional as F


def _apply_repetition_penalty(logits, input_ids, penalty, ignore):
    """The seed's helper: each id seen in a row (left padding excluded) is penalised once."""
    B, V = logits.shape
    seen = torch.zeros(B, V + 1, dtype=torch.bool)
    positions = torch.arange(input_ids.shape[1])[None, :]
    ids = input_ids.masked_fill(positions < ignore[:, None], V)  # padding goes to a spare column
    seen.scatter_(1, ids, True)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[:, :V], penalised, logits)


def _top_k(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]))[0][..., -1, None]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits, p):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative > p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses p
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int = 100, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
             attention_mask: Optional[torch.Tensor] = None, do_sample: Optional[bool] = None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """input_ids [B, T0] (left-padded with ``attention_mask``) -> [B, T0 + n]."""
    B, T0 = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T0, dtype=torch.long)
    eos = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    do_sample = temperature > 0 if do_sample is None else (do_sample and temperature > 0)
    ignore = (attention_mask != 0).int().argmax(dim=1)  # left padding per row
    unfinished = torch.ones(B, dtype=torch.bool)
    past = None
    for _ in range(max_new_tokens):
        # 2.1 forward: the whole prompt once, then only the newest token
        logits, past = model.forward(input_ids if past is None else input_ids[:, -1:],
                                     attention_mask=attention_mask, past_key_values=past, use_cache=True)
        next_logits = logits[:, -1, :].float()  # 2.2 [B, V]
        if repetition_penalty != 1.0:  # 2.3
            next_logits = _apply_repetition_penalty(next_logits, input_ids, repetition_penalty, ignore)
        if do_sample:
            if temperature != 1.0:  # 2.4
                next_logits = next_logits / temperature
            if top_k > 0:  # 2.5
                next_logits = _top_k(next_logits, top_k)
            if top_p < 1.0:  # 2.6
                next_logits = _top_p(next_logits, top_p)
            probs = F.softmax(next_logits, dim=-1)  # 2.7
            next_token = torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
        else:
            next_token = torch.argmax(next_logits, dim=-1)
        next_token = torch.where(unfinished, next_token, torch.full_like(next_token, pad))
        input_ids = torch.cat([input_ids, next_token[:, None]], dim=1)  # 2.8
        attention_mask = torch.cat([attention_mask, torch.ones(B, 1, dtype=attention_mask.dtype)], dim=1)
        if eos:  # 2.9 a row stops at its own EOS; the batch stops when every row has
            unfinished &= ~torch.isin(next_token, torch.tensor(eos))
            if not unfinished.any():
                break
    return input_ids

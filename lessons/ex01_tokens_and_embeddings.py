"""Lesson 01 example: bytes, byte-level BPE (a toy trainer and the real SmolLM2 merges), special
tokens, streaming decode, embeddings and weight tying, SentencePiece BPE (toy and Gemma 3's).

Run: python -m lessons 1   (or python -m lessons.ex01_tokens_and_embeddings [--quick])
Reads: npllm/tokenizer.py (Tokenizer, IncrementalDecoder), npllm/tokenizer_gguf.py (byte_alphabet,
merges_from_scores), npllm/io/gguf.py (read_gguf_metadata), npllm/quant/weight.py
(QuantizedWeight.take_rows), npllm/model.py (CausalLM._embed).
"""

import sys
from collections import Counter

import numpy as np

from npllm.tokenizer import byte_alphabet

from ._common import default_model, heading, show, table

TOY_CORPUS = "low lower lowest newer newest wider widest low low lower newest newest"


# ============================================================== bytes
def bytes_and_alphabet():
    heading("[1.1] text -> UTF-8 bytes -> GPT-2's printable byte alphabet")
    alpha = byte_alphabet()
    rows = []
    for text in (" ", "\n", "a", "é", "猫", "🙂"):
        b = text.encode("utf-8")
        rows.append((repr(text), len(text), " ".join(f"{x:02x}" for x in b), "".join(alpha[x] for x in b)))
    table(["text", "characters", "UTF-8 bytes (hex)", "spelled in the byte alphabet"], rows)
    print(f"{len(alpha)} byte symbols; {sum(1 for b, c in alpha.items() if ord(c) == b)} bytes stand for "
          f"themselves, the other {sum(1 for b, c in alpha.items() if ord(c) != b)} are moved to U+0100 and up")


# ============================================================== toy BPE
def toy_bpe_train(corpus, n_merges):
    """Learn merges on a word-frequency table: repeatedly fuse the most frequent adjacent pair."""
    words = Counter(corpus.split())
    seqs = {w: list(w) for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, n in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b, count))
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges, seqs


def bpe_apply(symbols, ranks):
    """Encode one pre-token: merge the adjacent pair with the best (lowest) rank until none is left."""
    steps = [list(symbols)]
    s = list(symbols)
    while len(s) > 1:
        best = min(((ranks.get((a, b), np.inf), i) for i, (a, b) in enumerate(zip(s, s[1:]))))
        if best[0] == np.inf:
            break
        i = best[1]
        s = s[:i] + [s[i] + s[i + 1]] + s[i + 2:]
        steps.append(s)
    return steps


def toy_bpe():
    heading("[1.2] a toy BPE trainer: merges learned from a tiny corpus")
    merges, seqs = toy_bpe_train(TOY_CORPUS, 8)
    table(["merge #", "pair", "count"], [(i, f"{a!r} + {b!r}", n) for i, (a, b, n) in enumerate(merges)])
    print("words after the merges:", {w: s for w, s in seqs.items()})
    ranks = {(a, b): i for i, (a, b, _) in enumerate(merges)}
    for word in ("lowest", "slower"):
        print(f"encode {word!r} with these merges:", " -> ".join("|".join(s) for s in bpe_apply(word, ranks)))


# ============================================================== the real tokenizer
SAMPLES = ["Hello world", " Hello world", "The cat sat on the mat.", "unbelievably", "我喜欢猫。",
           "🙂 ok", "x = 12345", "def f(x):\n    return x", "<|im_start|>user"]


def real_tokenizer(tok, quick):
    heading("[1.3] the SmolLM2 tokenizer on varied text")
    print(repr(tok))
    rows = []
    for text in SAMPLES:
        ids = tok.encode(text)
        pieces = [tok.id_to_token(i) for i in ids]
        rows.append((repr(text), len(text.encode("utf-8")), len(ids), " ".join(map(str, ids)),
                     " ".join(pieces), tok.decode(ids) == text))
    table(["text", "bytes", "tokens", "ids", "tokens as stored (byte alphabet)", "decode == text"], rows)

    heading("[1.4] replaying the BPE merges from the GGUF file by hand")
    from npllm.io.gguf import read_gguf_metadata
    from npllm.models import resolve_model

    md = read_gguf_metadata(resolve_model("smollm2-135m-instruct"))
    merges = md["tokenizer.ggml.merges"]
    print(f"tokenizer.ggml.model = {md['tokenizer.ggml.model']!r}, pre = {md['tokenizer.ggml.pre']!r}, "
          f"{len(md['tokenizer.ggml.tokens'])} tokens, {len(merges)} merges; first merges: {merges[:5]}")
    ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
    alpha = byte_alphabet()
    for word in (" tokenization", " unbelievably", "Hello"):
        symbols = [alpha[b] for b in word.encode("utf-8")]
        steps = bpe_apply(symbols, ranks)
        ours = [tok.token_to_id(t) for t in steps[-1]]
        shown = steps if not quick else [steps[0], steps[-1]]
        print(f"{word!r}: " + "  ->  ".join("|".join(s) for s in shown))
        print(f"   by hand {ours}  Tokenizer.encode {tok.encode(word)}  same: {ours == tok.encode(word)}")


def specials_and_streaming(tok):
    heading("[1.5] special tokens and the chat template")
    table(["name", "id", "token"], [(n, i, tok.id_to_token(i) if i is not None else None) for n, i in (
        ("bos_token_id", tok.bos_token_id), ("eos_token_id", tok.eos_token_id),
        ("pad_token_id", tok.pad_token_id), ("unk_token_id", tok.unk_token_id))])
    print(f"stop_token_ids = {tok.stop_token_ids}")
    text = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=False)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi!"}])
    print(f"apply_chat_template(..., tokenize=False) ->\n{text}")
    print(f"as ids ({len(ids)}): {ids}")

    heading("[1.6] decoding one token at a time: bytes of one character arrive separately")
    ids = tok.encode("猫🙂!")
    dec = tok.stream_decoder()
    rows = [(i, tok.id_to_token(i), repr(tok.decode([i])), repr(dec.push(i))) for i in ids]
    rows.append(("flush", "", "", repr(dec.flush())))
    table(["id", "token", "decode([id]) alone", "IncrementalDecoder.push(id)"], rows)


def embeddings(model, tok, quick):
    heading("[1.7] embeddings: ids -> rows of model.embed_tokens")
    E = model.embed_tokens
    print(f"model.embed_tokens: {E!r}" if not isinstance(E, np.ndarray) else f"embed_tokens {E.shape} {E.dtype}")
    ids = np.array([tok.encode(" The cat sat")])
    x = model._embed(ids)
    show("x = CausalLM._embed(ids)", x)
    print(f"ids {ids.tolist()} -> x {x.shape}; row norms {[round(float(n), 3) for n in np.linalg.norm(x[0], axis=-1)]}")
    words = [" cat", " dog", " cats", " car", " Paris", " London", " the"]
    wid = [tok.encode(w)[0] for w in words]
    V = (E.take_rows(np.array(wid)) if not isinstance(E, np.ndarray) else E[wid]).astype(np.float64)
    V /= np.linalg.norm(V, axis=-1, keepdims=True)
    sims = V @ V.T
    table(["cosine"] + [repr(w) for w in words], [(repr(w),) + tuple(sims[i]) for i, w in enumerate(words)], ".2f")

    heading("[1.8] weight tying: the LM head is the embedding matrix")
    print(f"config.tie_word_embeddings = {model.config.tie_word_embeddings}; "
          f"model.lm_head is model.embed_tokens: {model.lm_head is model.embed_tokens}")
    full = E.dequantize() if not isinstance(E, np.ndarray) else E                 # [V, D]
    print(f"embedding matrix: {full.shape} -> {full.nbytes / 2**20:.1f} MiB as float32; "
          f"stored as {getattr(E, 'type_name', full.dtype)}: {getattr(E, 'nbytes', full.nbytes) / 2**20:.1f} MiB")
    norms = np.linalg.norm(full, axis=-1)
    unit = full / np.maximum(norms[:, None], 1e-12)
    for w in words[:4] if quick else words:
        i = tok.encode(w)[0]
        nearest = np.argsort(-(unit @ unit[i]))[:6]
        print(f"nearest embeddings to {w!r}: {[tok.decode([int(j)]) for j in nearest]}")
    scores = full @ full[wid].T                                                      # [V, n]: tied head on e_i
    print("argmax of (embedding of w) . every embedding == w itself:",
          {w: bool(np.argmax(scores[:, k]) == wid[k]) for k, w in enumerate(words)})


# ============================================================== SentencePiece BPE
def sentencepiece_bpe():
    heading("[1.9] SentencePiece BPE: no merge list, the scores are the merge priorities")
    from npllm.tokenizer import Tokenizer
    from npllm.tokenizer_gguf import merges_from_scores

    words = " ".join("\u2581" + w for w in TOY_CORPUS.split())   # SentencePiece spells a space as "▁"
    learned, _ = toy_bpe_train(words, 10)
    chars = sorted(set(words.replace(" ", "")))
    pieces = [a + b for a, b, _ in learned]
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]   # + byte-fallback tokens
    tokens = specials + chars + pieces
    scores = [0.0] * len(specials) + [-1000.0] * len(chars) + [-float(k) for k in range(len(pieces))]
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
          "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(pieces))}
    recovered = merges_from_scores(tokens, scores)
    print(f"{len(learned)} merges learned by toy_bpe_train; as a SentencePiece vocabulary: {len(tokens)} tokens, "
          f"a score each (merge k -> score -k), no merge list")
    table(["piece", "score", "cuts of it that merges_from_scores lists"],
          [(repr(p), -k, ", ".join(f"{a!r}+{b!r}" for a, b in recovered if a + b == p)) for k, p in enumerate(pieces)])
    tok = Tokenizer.from_gguf(md)
    ranks = {(a, b): k for k, (a, b, _) in enumerate(learned)}
    for text in ("lowest", "slower", " lowest", "lowest 猫"):
        ids = tok.encode(text, add_special_tokens=False)
        by_hand = bpe_apply(list("\u2581" + text.replace(" ", "\u2581")), ranks)[-1]
        print(f"{text!r:12} -> {[tok.id_to_token(i) for i in ids]}  decode -> {tok.decode(ids)!r}"
              f"  (bpe_apply on the learned merges: {by_hand})")


def gemma_vocabulary(quick):
    heading("[1.10] Gemma 3's SentencePiece vocabulary: no space prefix, whitespace and HTML tokens")
    import importlib.util
    import time

    from npllm.io.gguf import read_gguf_metadata
    from npllm.models import ALIASES, resolve_model
    from npllm.tokenizer import Tokenizer
    from npllm.tokenizer_gguf import merges_from_scores

    if importlib.util.find_spec(ALIASES["gemma3-270m"].module) is None:
        print(f"(the gemma3-270m model is not installed: {ALIASES['gemma3-270m'].install_command})")
        return
    md = read_gguf_metadata(resolve_model("gemma3-270m"))
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    names = {1: "normal", 2: "unknown", 3: "control", 4: "user-defined", 5: "unused", 6: "byte"}
    counts = Counter(names[t] for t in types)
    print(f"{len(tokens)} tokens: {dict(counts)}; add_space_prefix = {md.get('tokenizer.ggml.add_space_prefix')}, "
          f"merges in the file: {len(md.get('tokenizer.ggml.merges', []))}")
    user = [t for t, ty in zip(tokens, types) if ty == 4]
    print(f"some user-defined tokens: {user[:3] + user[31:34] + user[62:68]}")
    t0 = time.perf_counter()
    n = len(merges_from_scores(tokens, md["tokenizer.ggml.scores"]))
    print(f"merges_from_scores: {n} merges in {time.perf_counter() - t0:.1f} s")
    tok = Tokenizer.from_gguf(md)
    for text in ("Hello", " Hello", "def f():\n        return 1", "<b>bold</b>\n\n\n", "<start_of_turn>user"):
        ids = tok.encode(text, add_special_tokens=False)
        print(f"{text!r:32} -> {len(ids)} tokens {[tok.id_to_token(i) for i in ids]}")


def main(quick: bool = False) -> None:
    bytes_and_alphabet()
    toy_bpe()
    pair = default_model()
    if pair is not None:
        model, tok = pair
        real_tokenizer(tok, quick)
        specials_and_streaming(tok)
        embeddings(model, tok, quick)
    sentencepiece_bpe()
    gemma_vocabulary(quick)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

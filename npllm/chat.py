"""Lesson 06 — chat templates: turning a list of messages into the prompt text.

A chat model was fine-tuned on conversations written in one exact format, e.g.
SmolLM2's ChatML::

    <|im_start|>user
    Hi!<|im_end|>
    <|im_start|>assistant

The format ships with the model as a Jinja template (GGUF metadata
``tokenizer.chat_template`` or ``tokenizer_config.json``'s ``chat_template``).
We render it the way HF transformers does in ``apply_chat_template``
(``transformers.utils.chat_template_utils``): jinja2's
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``,
the ``raise_exception`` and ``strftime_now`` globals and a ``tojson`` filter
that does not escape HTML.

A template comes from the internet, so it is untrusted code.  One render is bounded:

- **no internals**: the sandbox refuses Python internals (``__class__``,
  ``__subclasses__``, ``__globals__``...); we also refuse module and function
  internals and ``include``/``import``/``extends``;
- **time**: every loop iteration, call and filter spends from a step budget
  (``MAX_STEPS``; a filter that loops in Python spends one step per item), and
  the wall clock is checked at every step (``MAX_SECONDS``);
- **sizes, before allocating**: no single operation may run long or allocate much
  between two steps, so each one that can build a large value computes the size
  of its result from the sizes of its inputs first: ``'x' * n``, ``+``, ``~``,
  ``sum``, ``join``, ``replace``, ``center``, ``indent``, ``wordwrap``, ``tojson``,
  ``format`` and ``%`` (widths and precisions included), ``str()`` of a list...;
- **memory**: a size is bytes as CPython holds the value (``sys.getsizeof``
  summed over what it contains, a shared part counted each time it appears, so a
  list nested in itself a few times is as large as it would print or compare).
  One value may hold ``MAX_VALUE_BYTES`` and everything one render builds
  together ``MAX_RENDER_BYTES`` (each plus a few times the conversation's own
  size); lists, tuples and dicts the template builds carry their size with them
  (``_List``, ``_Tuple``, ``_Dict``), so checking is cheap;
- **output and recursion**: the rendered text is capped (``MAX_OUTPUT_CHARS``),
  and macros, ``caller()`` and recursive loops nest at most ``MAX_CALL_DEPTH`` deep;
- **parsing**: it cannot be interrupted, so the template's own size is capped
  (``MAX_TEMPLATE_CHARS`` and ``MAX_TEMPLATE_TOKENS``).

Any failure raises ``ChatTemplateError`` (a ``ValueError``) naming the problem.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
import types
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from .errors import NpllmError

MAX_TEMPLATE_CHARS = 1_000_000  # the template's source (real ones are 1-20 KB)
MAX_TEMPLATE_TOKENS = 50_000  # its Jinja tokens (real ones have up to ~2,500; compiling costs ~10 us each)
MAX_OUTPUT_CHARS = 2_000_000  # rendered prompt
MAX_VALUE_BYTES = 8 << 20  # any one string/list/dict the template builds (+ 2x the input)
MAX_RENDER_BYTES = 32 << 20  # all values one render builds, together (+ 16x the input)
MAX_STEPS = 250_000  # loop iterations + calls + filter calls per render (a long chat needs ~10k)
MAX_SECONDS = 1.0  # wall-clock bound on one render, whatever the template does
MAX_CALL_DEPTH = 64  # nested macro / caller() / loop() calls
MAX_INT_BITS = 1 << 16  # integers the template computes
MAX_DATA_DEPTH = 64  # nesting of the messages/tools passed in, and of values built


class ChatTemplateError(NpllmError, ValueError):
    """A chat template is malformed, unsafe, too expensive, or refused the conversation."""


# -------------------------------------------------------------- public API
def render_chat_template(template: str, messages: List[Dict[str, Any]], add_generation_prompt: bool = True,
                         **kwargs) -> str:
    """Render ``template`` for ``messages`` (HF ``apply_chat_template(..., tokenize=False)``).

    ``kwargs`` become template variables (``bos_token``, ``eos_token``, ``tools``...).
    """
    if not isinstance(template, str) or not template:
        raise ChatTemplateError("chat_template must be a non-empty string")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"chat template refused: {len(template)} characters (limit {MAX_TEMPLATE_CHARS})")
    budget = _Budget()
    messages = _check_messages(messages, budget)
    variables = {k: budget.plain(v, k) for k, v in kwargs.items()}
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    variables["messages"] = messages
    variables["add_generation_prompt"] = bool(add_generation_prompt)
    budget.grant(budget.input_bytes)

    env = _ChatEnvironment(budget)
    try:
        for n, _ in enumerate(env.lex(template)):  # parsing and compiling are not interruptible
            if n >= MAX_TEMPLATE_TOKENS:
                raise _TooBig(f"the template has more than {MAX_TEMPLATE_TOKENS} tokens")
        ast = env.parse(template)
        _guard_ast(ast, budget)
        compiled = env.from_string(ast)
        pieces, total = [], 0
        for piece in compiled.generate(**variables):
            total += len(piece)
            if total > MAX_OUTPUT_CHARS:
                raise _TooBig(f"rendered text exceeds {MAX_OUTPUT_CHARS} characters")
            pieces.append(piece)
        return "".join(pieces)
    except ChatTemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - every template failure becomes one clear error
        raise _as_template_error(e) from None


# ------------------------------------------------------------ error mapping
class _TooBig(Exception):
    pass


def _as_template_error(e: BaseException) -> ChatTemplateError:
    from jinja2 import exceptions as jx

    if isinstance(e, jx.SecurityError):
        return ChatTemplateError(f"chat template refused: unsafe operation ({_short(e)})")
    if isinstance(e, jx.TemplateSyntaxError):
        return ChatTemplateError(f"chat template has a syntax error at line {e.lineno}: {_short(e.message)}")
    if isinstance(e, _TooBig):
        return ChatTemplateError(f"chat template refused: {e}")
    if isinstance(e, RecursionError):
        return ChatTemplateError("chat template refused: recursion too deep")
    if isinstance(e, MemoryError):
        return ChatTemplateError("chat template refused: out of memory")
    if isinstance(e, OverflowError) and "Range too big" in str(e):
        return ChatTemplateError(f"chat template refused: {e}")
    if isinstance(e, jx.TemplateError):  # raise_exception(...) from the template itself
        return ChatTemplateError(f"chat template error: {_short(e)}")
    return ChatTemplateError(f"chat template failed: {type(e).__name__}: {_short(e)}")


def _short(message) -> str:
    """One line of at most 500 characters: a template chooses its error messages."""
    text = str(message)
    text = text if len(text) <= 500 else text[:500] + "..."
    return text.replace("\r", "\\r").replace("\n", "\\n")


# ------------------------------------------------------------- input data
def _check_messages(messages, budget: "_Budget") -> List[Dict[str, Any]]:
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"messages[{i}] must be a dict with a string 'role', got {m!r:.80}")
    return budget.plain(messages, "messages")


# =================================================================== sizes
# Lists, tuples and dicts that the template builds (and the data passed in) are these
# subclasses: they print, compare and serialize exactly as their bases, and they remember
# (bytes, nesting depth) so that an operation on them checks its size in O(1).  The sandbox
# already refuses their mutating methods (append, update...), so the size stays true.
class _List(list):
    __slots__ = ("_npllm",)


class _Dict(dict):
    __slots__ = ("_npllm",)


class _Tuple(tuple):
    pass  # (a tuple subclass cannot have __slots__; _npllm lives in its __dict__)


for _cls, _base in ((_List, list), (_Dict, dict), (_Tuple, tuple)):  # errors read as for the base type
    _cls.__name__ = _cls.__qualname__ = _base.__name__
_BUILT = {list: _List, dict: _Dict, tuple: _Tuple}
_SIZED = (_List, _Dict, _Tuple)


def _size_of(x) -> Optional[Tuple[int, int]]:
    """(bytes, depth) that a sized container carries, or None."""
    return getattr(x, "_npllm", None) if type(x) in _SIZED else None

_LEAVES = (str, bytes, int, float, type(None))  # bool is an int; Markup is a str
_SLOT = 8  # bytes per item of a list or tuple (a pointer)


class _Budget:
    """What one render may spend: steps, wall-clock time, output characters and bytes.

    Buffered output (``{% set %}`` blocks, macros) is built before it can be measured, so
    characters are charged up front: each loop iteration costs the literal text of that
    loop's body, each macro call the literal text of the macro, and each ``{{ value }}``
    its length.  Bytes are charged for every value built, before it is built wherever the
    operation could make it much larger than its inputs.
    """

    def __init__(self):
        self.steps = MAX_STEPS
        self.chars = MAX_OUTPUT_CHARS
        self.deadline = time.monotonic() + MAX_SECONDS
        self.value_limit = MAX_VALUE_BYTES
        self.bytes = MAX_RENDER_BYTES
        self.input_bytes = 0
        self.depth = 0  # nested macro / caller() / loop() calls
        self.macro_chars: Dict[str, int] = {}  # macro name -> literal text in its body
        self.max_chars = 1  # the largest body (for recursive loop() calls)

    def grant(self, input_bytes: int) -> None:
        """A longer conversation may need proportionally more (its own copies, slices...)."""
        self.value_limit += 2 * input_bytes
        self.bytes += 16 * input_bytes

    # ------------------------------------------------------------ time
    def spend(self, n: int = 1, chars: int = 0) -> None:
        self.steps -= n
        self.chars -= chars
        if self.steps < 0:
            raise _TooBig(f"more than {MAX_STEPS} loop iterations/calls/items (endless loop?)")
        if self.chars < 0:
            raise _TooBig(f"the template would produce more than {MAX_OUTPUT_CHARS} characters")
        if time.monotonic() > self.deadline:
            raise _TooBig(f"rendering took more than {MAX_SECONDS:g} s (endless loop?)")

    def iteration(self, n: int = 1, chars: int = 1) -> None:
        self.spend(n, n * chars)

    def output(self, value, autoescape: bool = False):
        """``{{ value }}``: charge what it will print (estimated before ``str()`` builds it)."""
        n = len(value) if isinstance(value, str) else self.text_len(value, self.chars)
        if autoescape and not hasattr(value, "__html__"):
            n *= 6  # escaping can turn each character into an entity such as '&#39;'
        self.spend(0, n)
        return value

    # ----------------------------------------------------------- bytes
    def allow(self, n_bytes: int, what: str) -> None:
        """Refuse, before building it, a value of ``n_bytes`` that would not fit."""
        if n_bytes > self.value_limit:
            raise _TooBig(f"{what} would build a value of {n_bytes:,} bytes (limit {self.value_limit:,})")
        if n_bytes > self.bytes:
            raise _TooBig(f"{what} would build {n_bytes:,} bytes; the template may build only "
                          f"{self.bytes:,} more (allocation bomb?)")

    def charge(self, n_bytes: int, what: str) -> None:
        self.allow(n_bytes, what)
        self.bytes -= n_bytes

    def measure(self, x, depth: int = 0) -> Tuple[int, int]:
        """(bytes, nesting depth) of ``x``; O(1) for leaves and for the subclasses above."""
        if isinstance(x, _LEAVES):
            return sys.getsizeof(x), 0
        known = _size_of(x)
        if known is not None:
            return known
        items = _items(x)
        if items is None:  # jinja's own objects, ranges, generators: small
            return sys.getsizeof(x), 0
        if depth >= MAX_DATA_DEPTH:
            raise _TooBig(f"a value nested more than {MAX_DATA_DEPTH} deep")
        self.spend(len(items) // 16)  # walking a container that does not know its size
        total, deepest = sys.getsizeof(x), 0
        for item in items:
            size, d = self.measure(item, depth + 1)
            total += size
            deepest = max(deepest, d + 1)
            if total > self.value_limit:
                raise _TooBig(f"a value of more than {self.value_limit:,} bytes")
        if deepest > MAX_DATA_DEPTH:  # hashing or comparing it would recurse that deep in C
            raise _TooBig(f"a value nested more than {MAX_DATA_DEPTH} deep")
        return total, deepest

    def adopt(self, x, what: str):
        """Check a value that an operation just built, charge it, and return it (a list, tuple
        or dict as its sized subclass).  Items that are not sized containers count as new."""
        if isinstance(x, (str, bytes)):
            self.charge(sys.getsizeof(x), what)
            return x
        if isinstance(x, int) and not isinstance(x, bool):
            if x.bit_length() > MAX_INT_BITS:
                raise _TooBig(f"{what} gives an integer of more than {MAX_INT_BITS} bits")
            return x
        cls = _BUILT.get(type(x))
        if type(x) in _SIZED:
            if _size_of(x) is not None:
                return x  # already sized and paid for
            cls = type(x)  # e.g. dict.fromkeys called on a _Dict
        if cls is None:
            if isinstance(x, (list, tuple, dict)):  # e.g. groupby's named tuples: kept as they are
                self.charge(self.measure(x)[0], what)
            return x
        size, depth = self.measure(x)
        new = sys.getsizeof(x) + sum(self.measure(i)[0] for i in _items(x) if _size_of(i) is None)
        self.charge(new, what)
        return self.sized(x if type(x) is cls else cls(x), size, depth)

    def materialize(self, iterable, what: str) -> list:
        """A list of the items of ``iterable``, each item spending a step, checked as it grows."""
        if isinstance(iterable, (list, tuple)):
            return iterable
        if hasattr(iterable, "__len__"):
            self.spend(len(iterable) // 64)
            self.allow(_chars_list_bytes(iterable) if isinstance(iterable, str) else 56 + _SLOT * len(iterable), what)
            return list(iterable)
        out = []
        for item in iterable:
            self.spend()
            out.append(item)
            if len(out) * _SLOT > self.value_limit:
                raise _TooBig(f"{what} would list more than {len(out)} items")
        return out

    @staticmethod
    def sized(x, size: int, depth: int):
        x._npllm = (size, depth)
        return x

    def plain(self, value, where: str, depth: int = 0):
        """A sized deep copy of data passed in, made of plain JSON-like values only (no objects
        with attributes to abuse); its bytes are the input size that ``grant`` scales by."""
        if depth >= MAX_DATA_DEPTH:
            raise ChatTemplateError(f"{where} is nested too deeply")
        if value is None or isinstance(value, (bool, int, float, str)):
            if depth == 0:
                self.input_bytes += sys.getsizeof(value)
            return value
        if isinstance(value, (list, tuple)):
            out = _List(self.plain(v, where, depth + 1) for v in value)
        elif isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise ChatTemplateError(f"{where} has a non-string key")
            out = _Dict((k, self.plain(v, f"{where}.{k}", depth + 1)) for k, v in value.items())
        else:
            raise ChatTemplateError(f"{where} holds a {type(value).__name__}; only str, numbers, bool, None, "
                                    "lists and dicts can be passed to a chat template")
        try:
            size, d = self.measure(out)  # its items are sized already: O(len)
        except _TooBig as e:
            raise ChatTemplateError(f"{where}: {e}") from None
        if depth == 0:
            self.input_bytes += size
        return self.sized(out, size, d)

    # ------------------------------------------------------------ text
    def text_len(self, x, limit: int, mode: str = "str") -> int:
        """An upper bound on ``len(str(x))`` (``mode="repr"``: ``repr``), found without building
        it; raises as soon as it passes ``limit``."""
        n = self._text_len(x, limit, mode)
        if n > limit:
            raise _TooBig(f"converting a value to text would make more than {max(limit, 0):,} characters")
        return n

    def _text_len(self, x, limit: int, mode: str) -> int:  # may stop early, past limit
        if isinstance(x, str):
            n = len(x) if mode == "str" else _repr_len(x) + (0 if type(x) is str else len(type(x).__name__) + 2)
        elif isinstance(x, bytes):
            n = _repr_len(x)
        elif isinstance(x, bool) or x is None:
            n = 5
        elif isinstance(x, int):
            n = x.bit_length() * 30103 // 100000 + 2
        elif isinstance(x, float):
            n = 24
        else:
            items = _items(x)
            if items is None:  # jinja's own small objects (Undefined, Macro, loop...), ranges, generators
                n = len(repr(x))
            else:
                self.spend(self.measure(x)[0] // 256)
                n = 32 + 4 * len(items)  # brackets, a type name, ", " or ": " and "()" around each item
                for item in items:
                    n += self._text_len(item, limit - n, "repr")
                    if n > limit:
                        break
        return n


def _items(x) -> Optional[list]:
    """What a container holds (a dict's keys and values), or None for anything else."""
    if isinstance(x, (list, tuple)):
        return x
    if isinstance(x, dict):
        return list(itertools.chain(x.keys(), x.values())) if len(x) < 1 << 20 else _too_many(x)
    if isinstance(x, _Namespace):
        attrs = object.__getattribute__(x, "_Namespace__attrs")
        return list(itertools.chain(attrs.keys(), attrs.values()))
    if isinstance(x, (type({}.keys()), type({}.values()), type({}.items()))):
        return _items(x.mapping)
    return None


def _too_many(x):
    raise _TooBig(f"a dict of {len(x)} items")


def _repr_len(s) -> int:
    """``len(repr(s))`` for a str or bytes, computed in chunks (repr of a 2 MB string may be 20 MB)."""
    if isinstance(s, str) and s.isascii() and s.isprintable():
        return len(s) + 2 + s.count("\\") + s.count("'")
    step = 1 << 16
    return 3 + sum(len(repr(s[i:i + step])) - 2 for i in range(0, len(s), step)) + s.count("'" if isinstance(
        s, str) else b"'")


def _chars_list_bytes(s: str) -> int:
    """``list(s)``: a slot per character, and a new 1-character str for each one beyond Latin-1."""
    return 56 + _SLOT * len(s) + (0 if s.isascii() else 80 * len(s))


def _text_bytes(n_chars: int, *parts) -> int:
    """Bytes of a new str of ``n_chars`` characters made from ``parts``: 1 per character if every
    part is ASCII text or a number, else up to 4."""
    ascii_only = all(p.isascii() if isinstance(p, (str, bytes)) else isinstance(p, (int, float, type(None)))
                     for p in parts)
    return 49 + n_chars * (1 if ascii_only else 4)


# ============================================================ size estimates
# Each estimate runs before its operation and raises _TooBig if the result would not fit.
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?([a-zA-Z%]?)", re.S)
_FLOAT_KINDS = ("e", "E", "f", "F", "g", "G", "%")
_PRINTF = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?([diouxXeEfFgGcrsab%])")


def _field_len(budget: _Budget, value, width: int, precision: Optional[int], kind: str) -> int:
    """Characters one formatted field takes: ``format(value, spec)``, ``'%s' % value``..."""
    if precision is not None and precision > MAX_OUTPUT_CHARS:
        raise _TooBig(f"a format precision of {precision}")
    if width > MAX_OUTPUT_CHARS:
        raise _TooBig(f"a format width of {width}")
    if kind in ("r", "a"):
        n = budget.text_len(value, budget.value_limit, "repr") * (3 if kind == "a" else 1)  # ascii: \x escapes
    elif isinstance(value, int) and not isinstance(value, bool) and kind not in _FLOAT_KINDS:
        n = value.bit_length() * 4 // 3 + 8  # any base >= 2, with grouping separators and a sign
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        n = (310 if kind in ("f", "F", "%") else 24) + (6 if precision is None else precision) + 8  # 1e308 in 'f'
    else:
        n = budget.text_len(value, budget.value_limit)
        if precision is not None:
            n = min(n, precision)
    return max(width, n)


def _printf_len(budget: _Budget, fmt: str, args) -> int:
    """``fmt % args`` (also the ``format`` filter): the literal text plus every directive."""
    values = args if isinstance(args, tuple) else (args,)
    n, k = len(fmt), 0
    for m in _PRINTF.finditer(fmt):
        key, width, precision, kind = m.groups()
        if width == "*" or precision == "*":
            raise _TooBig("a '%' format with a '*' width or precision")
        if kind == "%":
            continue
        if key is not None and isinstance(args, dict):
            value = args.get(key, "")
        else:
            value = values[k] if k < len(values) else ""
            k += 1
        n += _field_len(budget, value, int(width or 0), int(precision) if precision else None, kind)
    return n


def _join_len(budget: _Budget, sep, items) -> int:
    limit = budget.value_limit
    n = budget.text_len(sep, limit) * max(0, len(items) - 1)
    for item in items:
        n += budget._text_len(item, limit - n, "str")
        if n > limit:
            raise _TooBig(f"join would make more than {limit:,} characters")
    return n


_LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")  # str.splitlines


def _string_method_bytes(budget: _Budget, s, name: str, args, kwargs) -> Optional[int]:
    """Bytes of ``s.<name>(*args, **kwargs)`` for the str/bytes methods that can grow a value
    (None: the result is no larger than its inputs)."""
    a = list(args) + list(kwargs.values())
    ints = [x for x in a if isinstance(x, int) and not isinstance(x, bool)]
    n = len(s)
    if name in ("center", "ljust", "rjust", "zfill"):
        chars = max([n] + ints)
    elif name == "expandtabs":
        chars = n + s.count("\t" if isinstance(s, str) else b"\t") * max([8] + ints)
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        count = s.count(old) if old else n + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        chars = n + count * max(0, len(new) - len(old))
    elif name == "join" and args:
        return None  # handled where the items are known (ChatEnvironment.call)
    elif name in ("split", "rsplit", "splitlines"):
        sep = args[0] if args else kwargs.get("sep")
        if name == "splitlines":
            breaks = _LINE_BREAKS if isinstance(s, str) else (b"\n", b"\r")
            pieces = sum(s.count(c) for c in breaks)
        else:
            pieces = s.count(sep) if sep else n // 2
        return _SLOT * (pieces + 1) + 56 + (pieces + 1) * 49 + n * (1 if s.isascii() else 4)
    elif name in ("upper", "lower", "title", "capitalize", "swapcase", "casefold"):
        chars = n * (1 if s.isascii() else 3)  # 'ß'.upper() == 'SS'; a few characters become three
    elif name == "encode":
        codec = str(args[0] if args else kwargs.get("encoding", "utf-8")).lower().replace("_", "-")
        return 33 + (4 * n + 4 if codec.startswith(("utf", "latin", "ascii", "iso")) else 10 * n)  # '\U0001f389'
    elif name == "hex":
        return 33 + 3 * n
    elif name in ("striptags", "unescape"):  # Markup's, in Python
        return max(_text_bytes(n, s), _text_work(budget, name, s, n))
    elif name == "translate" and args:
        table = args[0]
        values = table.values() if isinstance(table, dict) else table if isinstance(table, (list, tuple)) else ()
        longest = max([1] + [len(v) for v in values if isinstance(v, (str, bytes))])
        chars = n * longest
    else:
        return None
    return _text_bytes(chars, s, *a)


# Jinja filters that loop in Python: steps per item of their input (about 4 us each).
_PER_ITEM = {"batch": 1, "dictsort": 2, "groupby": 4, "items": 1, "map": 1, "max": 1, "min": 1, "reject": 1,
             "rejectattr": 1, "select": 1, "selectattr": 1, "slice": 1, "sort": 1, "sum": 1, "unique": 1,
             "xmlattr": 1}
# Filters that need all the items of a generator: they are listed first (a step each).
_LISTING = frozenset(["batch", "dictsort", "groupby", "join", "list", "max", "min", "slice", "sort", "sum",
                      "unique"])
# Jinja filters that turn their value into text first.
_STRINGIFYING = frozenset(["capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower",
                           "replace", "safe", "string", "striptags", "title", "trim", "truncate", "upper",
                           "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr"])
# Jinja filters that walk text in Python: (characters per step, bytes per character of the lists
# of words or lines they build on the way).
_TEXT_WALKERS = {"urlize": (4, 64), "wordwrap": (16, 64), "title": (32, 64), "indent": (16, 32),
                 "wordcount": (64, 32), "urlencode": (64, 32), "striptags": (64, 32), "unescape": (64, 0)}


def _text_work(budget: _Budget, name: str, value, n: int) -> int:
    """Spend the steps of a text filter (or Markup method) that loops in Python; return the bytes
    of what it builds on the way."""
    per_step, per_char = _TEXT_WALKERS.get(name, (0, 0))
    if not per_step:
        return 0
    budget.spend(n // per_step)
    if name == "striptags":  # markupsafe rebuilds the whole string for each tag it removes
        tags = value.count("<") if isinstance(value, str) else n
        budget.spend(tags * n // 100_000)  # ~100 KB copied per step
    return per_char * n


def _filter_bytes(budget: _Budget, name: str, value, args, kwargs) -> Optional[int]:
    """Bytes that filter ``name`` would build from ``value`` (None: no larger than its input)."""
    def arg(i, key, default=None):
        return args[i] if len(args) > i else kwargs.get(key, default)

    ints = [a for a in list(args) + list(kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
    if name in ("batch", "slice"):
        for n in ints:
            budget.allow(abs(n) * _SLOT, f"{name}({n})")
        return None
    if name in ("tojson", "pprint"):
        size, depth = budget.measure(value)
        # HF's tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
        indent = arg(1, "indent") if name == "tojson" else None
        indent = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
        if indent > 64:
            raise _TooBig(f"{name} indent {indent} is too large")
        separators = arg(2, "separators") if name == "tojson" else None
        sep = max([2] + [len(x) for x in separators if isinstance(x, str)]) \
            if isinstance(separators, (list, tuple)) else 2
        budget.spend(size // (64 if indent or name == "pprint" else 1024))  # json's indenting encoder is Python
        escapes = 12 if name == "tojson" and arg(0, "ensure_ascii", False) else 2  # "\ud83c\udf89", "\n"
        chars = escapes * budget.text_len(value, budget.value_limit, "repr") \
            + (size // _SLOT) * (sep + max(indent, 1) * (depth + 1))  # separators, "\n" and an indent per item
        return _text_bytes(chars, "é")
    if name not in _STRINGIFYING:
        return None  # no larger than its input (join, list and sum are checked where they run)
    text_len = len(value) if isinstance(value, str) else budget.text_len(value, budget.value_limit)
    text = value if isinstance(value, str) else "é"
    chars = None
    if name in ("center",):
        chars = max([text_len] + ints)
    elif name == "indent":
        width = arg(0, "width", 4)
        ind = len(width) if isinstance(width, str) else width if isinstance(width, int) else 4
        lines = (text.count("\n") if isinstance(value, str) else text_len) + 2
        chars = text_len + lines * (ind + 1)
    elif name == "wordwrap":
        wrap = arg(2, "wrapstring") or "\n"  # wordwrap(s, width, break_long_words, wrapstring, ...)
        chars = text_len + (text_len + 1) * len(str(wrap))
    elif name == "replace":
        old, new = str(arg(0, "old", "")), str(arg(1, "new", ""))
        count = text.count(old) if old and isinstance(value, str) else text_len + 1
        chars = text_len + count * max(0, len(new) - len(old))
    elif name in ("capitalize", "lower", "upper", "title"):
        chars = text_len * (1 if isinstance(value, str) and value.isascii() else 3)
    elif name in ("escape", "e", "forceescape", "xmlattr"):
        chars = text_len * 6
    elif name == "urlencode":
        chars = text_len * (3 if isinstance(value, str) and value.isascii() else 12)
    elif name == "urlize":  # every word may become a link carrying the target and rel given
        extra = sum(len(a) for a in list(args) + list(kwargs.values()) if isinstance(a, str))
        chars = 3 * text_len + (64 + 2 * extra) * (text.count(" ") + 1 if isinstance(value, str) else text_len)
    elif name == "wordcount":
        chars = 24  # the number (the list of words it makes is counted by _text_work)
    elif name == "format":
        fmt_args = kwargs if kwargs else tuple(args)
        chars = _printf_len(budget, str(value), fmt_args)
    elif name in ("string", "safe", "trim", "truncate", "striptags"):
        chars = text_len
    if chars is None:
        return None
    return max(_text_bytes(chars, text, *args), _text_work(budget, name, value, text_len))


def _guarded_sum(env_sum, budget: _Budget):
    """Jinja's ``sum`` is Python's: adding lists one by one copies the partial sum each time
    (quadratic).  Lists and tuples are concatenated once here, after checking the total."""
    def do_sum(environment, iterable, attribute=None, start=0):
        items = budget.materialize(iterable, "sum")
        if attribute is not None:
            from jinja2.filters import make_attrgetter

            get = make_attrgetter(environment, attribute)
            items = [get(i) for i in items]
        base = list if isinstance(start, list) else tuple if isinstance(start, tuple) else None
        if base is not None and all(isinstance(i, base) for i in items):
            size = budget.measure(start)[0] + sum(budget.measure(i)[0] for i in items)
            budget.allow(size, "sum")
            out = list(itertools.chain(start, *items))
            return out if base is list else tuple(out)
        return env_sum(environment, items, start=start)

    do_sum.jinja_pass_arg = getattr(env_sum, "jinja_pass_arg", None)
    return do_sum


# =========================================================== filters, loops
def _guarded_filter(env_filter, name: str, budget: _Budget):
    def wrapper(*args, **kwargs):
        budget.spend()
        # Filters may get (env|context|eval_ctx, value, *args); find the value after those.
        n_internal = 0
        while n_internal < len(args) and _is_jinja_internal(args[n_internal]):
            n_internal += 1
        value, fargs = (args[n_internal], args[n_internal + 1:]) if len(args) > n_internal else (None, ())
        sized = hasattr(value, "__len__")
        if name in _PER_ITEM and sized and not isinstance(value, str):
            budget.spend(_PER_ITEM[name] * len(value))
        if name in _LISTING and not sized and value is not None:
            value = budget.materialize(value, name)  # a generator: count its items as they come
            args = args[:n_internal] + (value,) + args[n_internal + 1:]
        if name == "join" and value is not None:
            items = budget.materialize(value, "join")
            if kwargs.get("attribute") is None and len(fargs) < 2:
                budget.allow(_text_bytes(_join_len(budget, fargs[0] if fargs else kwargs.get("d", ""), items),
                                         *[i for i in items if isinstance(i, str)]), "join")
            args = args[:n_internal] + (items,) + args[n_internal + 1:]
        elif name == "list" and isinstance(value, str):
            budget.allow(_chars_list_bytes(value), "list")
        elif name == "list" and isinstance(value, range):
            budget.allow(56 + 36 * len(value), "list")
        else:
            n = _filter_bytes(budget, name, value, fargs, kwargs)
            if n is not None:
                budget.allow(n, name)
        result = env_filter(*args, **kwargs)
        if isinstance(result, types.GeneratorType) or type(result).__name__ in ("map", "filter", "list_reverseiterator",
                                                                                "reversed"):
            return _counted(result, budget, 0, adopt=f"the {name} filter")
        return budget.adopt(result, f"the {name} filter")

    for attr in ("jinja_pass_arg",):  # keep pass_context / pass_environment markers
        if hasattr(env_filter, attr):
            setattr(wrapper, attr, getattr(env_filter, attr))
    return wrapper


_JINJA_INTERNALS: tuple = ()  # (Environment, Context, EvalContext), set once jinja2 is imported


def _is_jinja_internal(a) -> bool:
    return isinstance(a, _JINJA_INTERNALS)




class _Loop:
    """A ``{% for %}`` iterable that spends a step (and the body's literal text) per item.
    It has a length when its iterable has one, as ``loop.length`` and ``loop.last`` need."""

    __slots__ = ("iterable", "budget", "chars")

    def __init__(self, iterable, budget: _Budget, chars: int):
        self.iterable, self.budget, self.chars = iterable, budget, chars

    def __len__(self):
        return len(self.iterable)  # TypeError for a generator: LoopContext then lists it (counted)

    def __iter__(self):
        iteration, chars = self.budget.iteration, self.chars
        for item in self.iterable:
            iteration(1, chars)
            yield item


def _guard_iter(budget: _Budget):
    def guard(iterable, body_chars=1):
        if isinstance(iterable, _Loop):
            return iterable
        return _Loop(iterable, budget, body_chars)

    return guard


def _counted(iterable, budget: _Budget, body_chars: int, adopt: Optional[str] = None):
    for item in iterable:
        budget.iteration(1, body_chars)
        yield budget.adopt(item, adopt) if adopt else item


def _guard_ast(ast, budget: _Budget) -> None:
    """Route every ``{% for %}`` iterable through a counting guard, every ``~`` and every list,
    tuple or dict literal through size guards, and record how much literal text each loop
    and macro body holds."""
    from jinja2 import nodes
    from jinja2.exceptions import SecurityError

    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        raise SecurityError(f"line {node.lineno}: a chat template may not include, import or extend "
                            "other templates")

    def literal_chars(node) -> int:
        bodies = list(node.body) + list(getattr(node, "else_", []))
        return max(1, sum(len(d.data) for b in bodies for d in b.find_all(nodes.TemplateData)))

    for node in ast.find_all(nodes.For):
        chars = literal_chars(node)
        budget.max_chars = max(budget.max_chars, chars)
        node.iter = nodes.Filter(node.iter, "npllm_loop_guard", [nodes.Const(chars)], [], None, None,
                                 lineno=node.lineno)
    for node in ast.find_all((nodes.Macro, nodes.CallBlock)):
        name = node.name if isinstance(node, nodes.Macro) else "caller"
        chars = literal_chars(node)
        budget.macro_chars[name] = max(budget.macro_chars.get(name, 1), chars)
        budget.max_chars = max(budget.max_chars, chars)

    def guarded(child):
        if isinstance(child, nodes.Concat):  # a ~ b ~ c: sized before it is joined
            return nodes.Filter(nodes.List(child.nodes, lineno=child.lineno), "npllm_concat", [], [], None, None,
                                lineno=child.lineno)
        if isinstance(child, (nodes.List, nodes.Dict)) or isinstance(child, nodes.Tuple) and child.ctx == "load":
            return nodes.Filter(child, "npllm_built", [], [], None, None, lineno=child.lineno)
        return child

    for parent in list(ast.find_all(nodes.Node)):
        for field_name in parent.fields:
            child = getattr(parent, field_name, None)
            if isinstance(child, nodes.Node):
                setattr(parent, field_name, guarded(child))
            elif isinstance(child, list):
                setattr(parent, field_name, [guarded(c) if isinstance(c, nodes.Node) else c for c in child])


# =============================================================== environment
_Namespace = type(None)  # jinja2.utils.Namespace once jinja2 is imported (see _make_environment_class)


def _make_environment_class():
    global _Namespace, _JINJA_INTERNALS
    from jinja2 import ext, utils
    from jinja2.environment import Environment
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.runtime import BlockReference, LoopContext, Macro, markup_join, str_join
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter, safe_range
    from jinja2.utils import pass_eval_context

    _Namespace = utils.Namespace
    _JINJA_INTERNALS = (Environment, Context, EvalContext)

    def namespace_class(budget: _Budget):
        class Namespace(utils.Namespace):
            """``namespace()`` that refuses underscore names (as HF's TemplateNamespace); its values
            are sized like any other."""

            def __init__(*args, **kwargs):  # noqa: N805 - same signature trick as jinja2.utils.Namespace
                self, args = args[0], args[1:]
                attrs = dict(*args, **kwargs)
                for name in attrs:
                    Namespace._check_name(name)
                    attrs[name] = budget.adopt(attrs[name], "namespace()")
                utils.Namespace.__init__(self, attrs)

            def __setitem__(self, name, value):
                Namespace._check_name(name)
                utils.Namespace.__setitem__(self, name, budget.adopt(value, f"namespace attribute {name!r}"))

            @staticmethod
            def _check_name(name):
                if isinstance(name, str) and name.startswith("_"):
                    raise SecurityError(f"namespace attribute {name!r} starts with an underscore")

        return Namespace

    class DictGlobal:
        """``dict(...)`` without exposing the ``dict`` type itself."""

        def __init__(self, budget: _Budget):
            self.budget = budget

        def __call__(self, *args, **kwargs):
            return self.budget.adopt(dict(*args, **kwargs), "dict()")

        def fromkeys(self, iterable, value=None):
            b = self.budget
            items = b.materialize(iterable, "dict.fromkeys")
            b.allow(len(items) * (2 * _SLOT + b.measure(value)[0]), "dict.fromkeys")
            return b.adopt(dict.fromkeys(items, value), "dict.fromkeys")

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Formatter:
        """``str.format`` fields checked before ``format()`` builds them (widths, precisions, ``!r``)."""

        def __init__(self, env, budget: _Budget, **kwargs):
            super().__init__(env, **kwargs)
            self.budget, self.total = budget, 0
            self.factor = 6 if "escape" in kwargs else 1  # Markup.format escapes each field

        def vformat(self, format_string, args, kwargs):
            self.total = len(format_string)
            return super().vformat(format_string, args, kwargs)

        def convert_field(self, value, conversion):
            if conversion in ("r", "a", "s"):
                self.budget.text_len(value, self.budget.value_limit, "str" if conversion == "s" else "repr")
            return super().convert_field(value, conversion)

        def format_field(self, value, format_spec):
            m = _FORMAT_SPEC.fullmatch(format_spec)
            width, precision, kind = (int(m.group(1) or 0), int(m.group(2)) if m.group(2) else None, m.group(3)) \
                if m else (0, None, "")
            self.total += self.factor * _field_len(self.budget, value, width, precision, kind)
            self.budget.allow(_text_bytes(self.total, "é"), "str.format")
            return super().format_field(value, format_spec)

    class PlainFormatter(Formatter, SandboxedFormatter):
        pass

    class EscapeFormatter(Formatter, SandboxedEscapeFormatter):
        pass

    class ChatEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])

        def __init__(self, budget: _Budget):
            @pass_eval_context
            def finalize(eval_ctx, value):
                return budget.output(value, eval_ctx.autoescape)

            super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols],
                             finalize=finalize)
            self.budget = budget
            self.filters["tojson"] = tojson
            self.filters["sum"] = _guarded_sum(self.filters["sum"], budget)
            for name in list(self.filters):
                self.filters[name] = _guarded_filter(self.filters[name], name, budget)
            self.filters["npllm_loop_guard"] = _guard_iter(budget)
            self.filters["npllm_built"] = lambda value: budget.adopt(value, "a literal")

            @pass_eval_context
            def concat(eval_ctx, values):  # a ~ b ~ c
                budget.spend()
                n = sum(budget.text_len(v, budget.value_limit) for v in values)
                budget.allow(_text_bytes(n * (6 if eval_ctx.autoescape else 1), *values), "'~'")
                return budget.adopt((markup_join if eval_ctx.autoescape else str_join)(values), "'~'")

            def strftime_now(fmt):
                fmt = str(fmt)
                budget.allow(_text_bytes(len(fmt) + 64 * fmt.count("%"), fmt), "strftime_now")
                return datetime.now().strftime(fmt)

            self.filters["npllm_concat"] = concat
            self.globals.pop("lipsum", None)
            self.globals["range"] = safe_range
            self.globals["raise_exception"] = raise_exception
            self.globals["strftime_now"] = strftime_now
            self.globals["dict"] = DictGlobal(budget)
            self.globals["namespace"] = namespace_class(budget)

        def unsafe_undefined(self, obj, attribute):
            # jinja2 would return an Undefined that prints as ''; refuse loudly instead.
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} object is refused")

        def is_safe_attribute(self, obj, attr, value):
            if isinstance(obj, types.ModuleType) or isinstance(value, types.ModuleType):
                return False
            if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)) and attr not in ("fromkeys",):
                return False
            return super().is_safe_attribute(obj, attr, value)

        def wrap_str_format(self, value):
            """``'...'.format`` / ``format_map`` through a formatter that sizes each field first."""
            if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or \
                    value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str):
                return None
            s, budget, is_map = value.__self__, self.budget, value.__name__ == "format_map"

            def format_(*args, **kwargs):
                if is_map:
                    if kwargs or len(args) != 1:
                        raise TypeError("format_map() takes exactly one argument")
                    args, kwargs = (), args[0]
                formatter = EscapeFormatter(self, budget, escape=s.escape) if hasattr(s, "__html__") \
                    else PlainFormatter(self, budget)
                return budget.adopt(type(s)(formatter.vformat(s, args, kwargs)), "str.format")

            return format_

        def getitem(self, obj, argument):
            value = super().getitem(obj, argument)
            if isinstance(argument, slice):  # a new str or list
                return self.budget.adopt(value, "a slice")
            return value

        def call_binop(self, context, operator, left, right):
            budget = self.budget
            budget.spend()
            escaping = 6 if hasattr(left, "__html__") else 1  # Markup escapes the other operand
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, bytes)) and isinstance(n, int) and n > 1:
                        budget.allow(_text_bytes(len(seq) * n * escaping, seq), "'*' repetition")
                    elif isinstance(seq, (list, tuple)) and isinstance(n, int) and n > 1:
                        size, depth = budget.measure(seq)  # n references to each item: n times its bytes
                        size = 56 + n * (size - sys.getsizeof(seq) + _SLOT * len(seq))
                        budget.allow(size, "'*' repetition")
                        budget.charge(56 + _SLOT * len(seq) * n, "'*' repetition")
                        base = list if isinstance(seq, list) else tuple
                        return budget.sized(_BUILT[base](base(seq) * n), size, depth)
                if isinstance(left, int) and isinstance(right, int) and \
                        left.bit_length() + right.bit_length() > 2 * MAX_INT_BITS:
                    raise _TooBig("an integer product is too large")
            elif operator == "+" and (isinstance(left, list) and isinstance(right, list)
                                      or isinstance(left, tuple) and isinstance(right, tuple)):
                (a, da), (b, db) = budget.measure(left), budget.measure(right)
                budget.allow(a + b, "'+'")
                budget.charge(56 + _SLOT * (len(left) + len(right)), "'+'")  # references to the same items
                out = list(left)
                out.extend(right)
                return budget.sized(_List(out) if isinstance(left, list) else _Tuple(out), a + b, max(da, db))
            elif operator == "+" and isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
                budget.allow(_text_bytes(len(left) + len(right) * escaping, left, right), "'+'")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                    if right * abs(left).bit_length() > MAX_INT_BITS:
                        raise _TooBig(f"{left} ** {right} is too large")
            elif operator == "%" and isinstance(left, str):
                budget.allow(_text_bytes(_printf_len(budget, left, right) * escaping, "é"), "'%' formatting")
            return budget.adopt(self.binop_table[operator](left, right), f"'{operator}'")

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's signature
            budget = __self.budget
            nested = isinstance(__obj, (Macro, LoopContext, BlockReference))
            if isinstance(__obj, Macro):  # a macro or caller() emits its body
                budget.iteration(1, budget.macro_chars.get(__obj.name, budget.max_chars))
            elif isinstance(__obj, LoopContext):  # a recursive loop(...) call: guard its iterable too
                budget.iteration(1, budget.max_chars)
                if args:
                    args = (_Loop(args[0], budget, budget.max_chars),) + args[1:]
            else:
                budget.spend()
            owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
            if isinstance(owner, (str, bytes)):  # str methods, and Markup's (which escape their arguments)
                escaping = 6 if hasattr(owner, "__html__") and name not in ("striptags", "unescape") else 1
                if name == "join" and args:
                    items = budget.materialize(args[0], "join")
                    budget.allow(_text_bytes(escaping * sum(len(i) for i in items if isinstance(i, (str, bytes)))
                                             + len(owner) * max(0, len(items) - 1), owner, *items[:1000]), "join")
                    args = (items,) + args[1:]
                else:
                    n = _string_method_bytes(budget, owner, name, args, kwargs)
                    if n is not None:
                        budget.allow(n * escaping, f"str.{name}")
            elif isinstance(owner, int) and name == "to_bytes":
                length = args[0] if args else kwargs.get("length", 1)
                if isinstance(length, int):
                    budget.allow(33 + length, "int.to_bytes")
            if not nested:
                return budget.adopt(super().call(__context, __obj, *args, **kwargs), f"{name or 'a call'}()")
            if budget.depth >= MAX_CALL_DEPTH:
                raise _TooBig(f"macros/loops nested more than {MAX_CALL_DEPTH} deep (endless recursion?)")
            budget.depth += 1
            try:
                return budget.adopt(super().call(__context, __obj, *args, **kwargs), "a macro")
            finally:
                budget.depth -= 1

    return ChatEnvironment


_ENV_CLASS = None


def _ChatEnvironment(budget: _Budget):  # noqa: N802 - acts as a class
    global _ENV_CLASS
    if _ENV_CLASS is None:  # jinja2 is imported on first use
        _ENV_CLASS = _make_environment_class()
    return _ENV_CLASS(budget)


# ---------------------------------------------------------------- helpers
def select_template(templates, name: Optional[str] = None) -> Optional[str]:
    """``tokenizer_config.json`` may hold one template or a list of ``{"name", "template"}``."""
    if templates is None or isinstance(templates, str):
        return templates
    if isinstance(templates, list):
        table = {t.get("name"): t.get("template") for t in templates if isinstance(t, dict)}
        chosen = table.get(name or "default")
        if isinstance(chosen, str):
            return chosen
        raise ChatTemplateError(f"no chat template named {name or 'default'!r} (have {sorted(map(str, table))})")
    raise ChatTemplateError(f"chat_template must be a string or a list, got {type(templates).__name__}")

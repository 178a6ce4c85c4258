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

A template comes from the internet, so it is untrusted code:

- the sandbox refuses Python internals (``__class__``, ``__subclasses__``,
  ``__globals__``...) and we also refuse module and function internals;
- every ``{% for %}`` loop, call and filter spends from one step budget (and
  the render from a time budget), so a template that loops without end stops
  with an error;
- operations that can build huge values (``'x' * n``, ``n ** m``, ``center``,
  ``replace``, ``join``...) are checked *before* they allocate, and every
  string or list produced is capped; the rendered text is capped too.

Any failure raises ``ChatTemplateError`` (a ``ValueError``) naming the problem.
"""

from __future__ import annotations

import json
import re
import time
import types
from datetime import datetime
from typing import Any, Dict, List, Optional

from .errors import NpllmError

MAX_OUTPUT_CHARS = 2_000_000  # rendered prompt
MAX_VALUE_SIZE = 2_000_000  # any string/list/dict the template builds
MAX_STEPS = 250_000  # loop iterations + calls + filter calls per render (a long chat needs ~10k)
MAX_SECONDS = 5.0  # wall-clock bound on one render, whatever the template does
MAX_INT_BITS = 1 << 16  # integers the template computes
MAX_DATA_DEPTH = 64  # nesting of messages/tools passed in


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
    messages = _check_messages(messages)
    variables = {k: _plain(v, k) for k, v in kwargs.items()}
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    variables["messages"] = messages
    variables["add_generation_prompt"] = bool(add_generation_prompt)

    budget = _Budget()
    env = _ChatEnvironment(budget)
    try:
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
        return ChatTemplateError(f"chat template refused: unsafe operation ({e})")
    if isinstance(e, jx.TemplateSyntaxError):
        return ChatTemplateError(f"chat template has a syntax error at line {e.lineno}: {e.message}")
    if isinstance(e, _TooBig):
        return ChatTemplateError(f"chat template refused: {e}")
    if isinstance(e, RecursionError):
        return ChatTemplateError("chat template refused: recursion too deep")
    if isinstance(e, OverflowError) and "Range too big" in str(e):
        return ChatTemplateError(f"chat template refused: {e}")
    if isinstance(e, jx.TemplateError):  # raise_exception(...) from the template itself
        return ChatTemplateError(f"chat template error: {e}")
    return ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}")


# ------------------------------------------------------------- input data
def _check_messages(messages) -> List[Dict[str, Any]]:
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list of dicts, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"messages[{i}] must be a dict with a string 'role', got {m!r:.80}")
        out.append(_plain(m, f"messages[{i}]"))
    return out


def _plain(value, where: str, depth: int = 0):
    """A deep copy made of plain JSON-like values only (no objects with attributes to abuse)."""
    if depth > MAX_DATA_DEPTH:
        raise ChatTemplateError(f"{where} is nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where, depth + 1) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ChatTemplateError(f"{where} has a non-string key")
        return {k: _plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    raise ChatTemplateError(f"{where} holds a {type(value).__name__}; only str, numbers, bool, None, "
                            "lists and dicts can be passed to a chat template")


# ------------------------------------------------------------- the guards
class _Budget:
    """What one render may spend: steps (loop iterations, calls, filters) and characters.

    Buffered output (``{% set %}`` blocks, macros) is built before it can be
    measured, so characters are charged up front: each loop iteration costs
    the literal text of that loop's body, each macro call the literal text of
    the macro, and each ``{{ value }}`` its length.
    """

    def __init__(self):
        self.steps = MAX_STEPS
        self.chars = MAX_OUTPUT_CHARS
        self.deadline = time.monotonic() + MAX_SECONDS
        self.calls = 0
        self.macro_chars: Dict[str, int] = {}  # macro name -> literal text in its body
        self.max_chars = 1  # the largest body (for recursive loop() calls)

    def spend(self, n: int = 1, chars: int = 0) -> None:
        self.steps -= n
        self.chars -= chars
        if self.steps < 0:
            raise _TooBig(f"more than {MAX_STEPS} loop iterations/calls (endless loop?)")
        self.calls += 1
        if self.calls % 256 == 0 and time.monotonic() > self.deadline:
            raise _TooBig(f"rendering took more than {MAX_SECONDS:g} s (endless loop?)")
        if self.chars < 0:
            raise _TooBig(f"the template would produce more than {MAX_OUTPUT_CHARS} characters")

    def iteration(self, n: int = 1, chars: int = 1) -> None:
        self.spend(n, n * chars)

    def output(self, value):
        self.spend(0, len(value) if isinstance(value, str) else len(str(_check_size(value))))
        return value


def _check_size(value):
    """Refuse any value the template produced that is too large; return it otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _TooBig(f"an integer exceeds {MAX_INT_BITS} bits")
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_VALUE_SIZE:
        raise _TooBig(f"a value of length {len(value)} exceeds {MAX_VALUE_SIZE}")
    return value


def _refuse_if_larger(n, what: str) -> None:
    if n > MAX_VALUE_SIZE:
        raise _TooBig(f"{what} would build a value of size {n} (limit {MAX_VALUE_SIZE})")


def _check_format_string(s) -> None:
    """``'%09999999d' % 1`` or ``'{:9999999}'.format(1)`` allocate the width first."""
    if isinstance(s, str) and re.search(r"[0-9]{7,}|%[^a-zA-Z%]*\*", s):
        raise _TooBig("a format string with a huge or '*' width")


def _estimate(name: str, value, args, kwargs) -> None:
    """Pre-allocation size checks for the string operations that can grow a value a lot."""
    ints = [a for a in list(args) + list(kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
    if name in ("center", "ljust", "rjust", "zfill", "expandtabs", "indent", "to_bytes", "slice", "batch",
                "wordwrap", "truncate", "tojson", "dump"):
        for n in ints:
            _refuse_if_larger(abs(n) * (max(1, value.count("\n") + 1) if name == "indent" and
                                        isinstance(value, str) else 1), f"{name}({n})")
        if name == "tojson":
            indent = kwargs.get("indent", args[0] if args else None)
            if isinstance(indent, str):
                _refuse_if_larger(len(indent) * 1000, "tojson(indent)")
            elif isinstance(indent, int) and indent > 64:
                raise _TooBig(f"tojson indent {indent} is too large")
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = value.count(old) if old else len(value) + 1
        _refuse_if_larger(len(value) + count * max(0, len(new) - len(old)), "replace")
    elif name in ("format", "format_map"):
        _check_format_string(value)


def _join_size(sep, items) -> int:
    return sum(len(str(x)) for x in items) + len(str(sep)) * max(0, len(items) - 1)


def _guarded_filter(env_filter, name: str, budget: _Budget):
    def wrapper(*args, **kwargs):
        budget.spend()
        # Filters may get (env|context|eval_ctx, value, *args); find the value after those.
        rest = [a for a in args if not _is_jinja_internal(a)]
        value, fargs = (rest[0], rest[1:]) if rest else (None, [])
        if name == "join" and value is not None and not isinstance(value, str):
            value = list(value)
            _refuse_if_larger(_join_size(fargs[0] if fargs else kwargs.get("d", ""), value), "join")
            args = tuple(a if a is not rest[0] else value for a in args)
        if name == "format":
            _check_format_string(value)
        _estimate(name, value, fargs, kwargs)
        return _check_size(env_filter(*args, **kwargs))

    for attr in ("jinja_pass_arg",):  # keep pass_context / pass_environment markers
        if hasattr(env_filter, attr):
            setattr(wrapper, attr, getattr(env_filter, attr))
    return wrapper


def _is_jinja_internal(a) -> bool:
    from jinja2.environment import Environment
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    return isinstance(a, (Environment, Context, EvalContext))


def _guard_iter(budget: _Budget):
    def guard(iterable, body_chars=1):
        if hasattr(iterable, "__len__"):
            budget.iteration(len(iterable), body_chars)
            return iterable
        return _counted(iterable, budget, body_chars)

    return guard


def _counted(iterable, budget: _Budget, body_chars: int):
    for item in iterable:
        budget.iteration(1, body_chars)
        yield item


def _guard_ast(ast, budget: _Budget) -> None:
    """Route every ``{% for %}`` iterable and ``~`` concatenation through a guard filter,
    and record how much literal text each loop and macro body holds."""
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
    for parent in list(ast.find_all(nodes.Node)):
        for field_name in parent.fields:
            child = getattr(parent, field_name, None)
            if isinstance(child, nodes.Concat):
                setattr(parent, field_name, _size_guarded(child, nodes))
            elif isinstance(child, list):
                setattr(parent, field_name, [
                    _size_guarded(c, nodes) if isinstance(c, nodes.Concat) else c for c in child])


def _size_guarded(node, nodes):
    return nodes.Filter(node, "npllm_size_guard", [], [], None, None, lineno=node.lineno)


def _make_environment_class():
    from jinja2 import ext, utils
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.runtime import LoopContext, Macro
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    class _Namespace(utils.Namespace):
        """``namespace()`` that refuses underscore names (as HF's TemplateNamespace)."""

        def __init__(*args, **kwargs):  # noqa: N805 - same signature trick as jinja2.utils.Namespace
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                _Namespace._check_name(name)
            utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _Namespace._check_name(name)
            utils.Namespace.__setitem__(self, name, _check_size(value))

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"namespace attribute {name!r} starts with an underscore")

    class _Dict:
        """``dict(...)`` without exposing the ``dict`` type itself."""

        def __call__(self, *args, **kwargs):
            return _check_size(dict(*args, **kwargs))

        def fromkeys(self, *args, **kwargs):
            return _check_size(dict.fromkeys(*args, **kwargs))

    def raise_exception(message):
        raise TemplateError(message)

    def strftime_now(fmt):
        _check_format_string(fmt)
        return datetime.now().strftime(str(fmt))

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class ChatEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])

        def __init__(self, budget: _Budget):
            super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols],
                             finalize=budget.output)
            self.budget = budget
            self.filters["tojson"] = tojson
            for name in list(self.filters):
                self.filters[name] = _guarded_filter(self.filters[name], name, budget)
            self.filters["npllm_loop_guard"] = _guard_iter(budget)
            self.filters["npllm_size_guard"] = _check_size
            self.globals.pop("lipsum", None)
            self.globals["range"] = self._range
            self.globals["raise_exception"] = raise_exception
            self.globals["strftime_now"] = strftime_now
            self.globals["dict"] = _Dict()
            self.globals["namespace"] = _Namespace

        def _range(self, *args):
            return safe_range(*args)

        def unsafe_undefined(self, obj, attribute):
            # jinja2 would return an Undefined that prints as ''; refuse loudly instead.
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} object is refused")

        def is_safe_attribute(self, obj, attr, value):
            if isinstance(obj, types.ModuleType) or isinstance(value, types.ModuleType):
                return False
            if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)) and attr not in ("fromkeys",):
                return False
            return super().is_safe_attribute(obj, attr, value)

        def call_binop(self, context, operator, left, right):
            self.budget.spend()
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                        _refuse_if_larger(len(seq) * max(n, 0), "'*' repetition")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                    if right * abs(left).bit_length() > MAX_INT_BITS:
                        raise _TooBig(f"{left} ** {right} is too large")
                if isinstance(left, float) or isinstance(right, float):
                    pass  # floats overflow to an OverflowError, no allocation
            elif operator == "%" and isinstance(left, str):
                _check_format_string(left)
            return _check_size(self.binop_table[operator](left, right))

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's signature
            if isinstance(__obj, Macro):  # a macro or caller() emits its body
                __self.budget.iteration(1, __self.budget.macro_chars.get(__obj.name, __self.budget.max_chars))
            elif isinstance(__obj, LoopContext):  # a recursive loop(...) call
                __self.budget.iteration(1, __self.budget.max_chars)
            else:
                __self.budget.spend()
            target = getattr(__obj, "__wrapped__", __obj)  # str.format is pre-wrapped by the sandbox
            owner = getattr(target, "__self__", None)
            name = getattr(target, "__name__", "")
            if isinstance(owner, (str, int)) and not isinstance(owner, bool):
                if name == "join" and isinstance(owner, str) and args:
                    items = list(args[0])
                    _refuse_if_larger(_join_size(owner, items), "join")
                    args = (items,) + args[1:]
                _estimate(name, owner, args, kwargs)
            return _check_size(super().call(__context, __obj, *args, **kwargs))

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

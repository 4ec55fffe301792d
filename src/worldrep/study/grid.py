"""Grids and templates: one declaration in a study file becomes many steps.

A declaration's `grid` binds variables to lists of values (a literal list, the name of a list
in the study's `lists`, or a generator such as `{pairs: tasks}`); `where` keeps only some
bindings (`x != y`); every string of the declaration is then rendered with `{x}`, `{x.name}`,
`{x.number}`, `{c[0]}` placeholders. A string that is exactly one placeholder becomes the value
itself (an int stays an int, a combination becomes a list).
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
import re
from collections.abc import Iterator
from typing import Any

from ..errors import WorldrepError

PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)((?:\[\d+\]|\.[A-Za-z_]\w*)*)\}")
ACCESSOR = re.compile(r"\[(\d+)\]|\.([A-Za-z_]\w*)")
GENERATORS = ("pairs", "triples", "combinations", "permutations", "range")
MAX_STEPS = 100_000  # the default cap on a study's steps (a study file's max_steps)
MAX_TEXT = 1_000  # the longest string or list a `where` expression may build
MAX_RENDERED = 10_000_000  # values a study's rendered step bodies may hold in all


class GridValue:
    """One value of a grid variable: a task (by number or name), a setting, a combination
    (tuple) or a mapping of settings (`{w.epochs}`; its text is its 'name')."""

    def __init__(self, raw: Any):
        self.raw = raw

    def text(self) -> str:
        if isinstance(self.raw, dict):
            if "name" not in self.raw:
                raise WorldrepError(f"a grid value that is a mapping ({self.raw}) needs a 'name' "
                                    "key to appear in text; use {var.key} for its fields")
            return str(self.raw["name"])
        if isinstance(self.raw, tuple):
            parts = [str(v) for v in self.raw]
            # `pt2-{c}` reads as pt2-12 for task numbers, pt2-distance-angle for names.
            return ("" if all(len(p) == 1 for p in parts) else "-").join(parts)
        return str(self.raw)

    def native(self) -> Any:
        return list(self.raw) if isinstance(self.raw, tuple) else self.raw

    def item(self, index: int) -> GridValue:
        if not isinstance(self.raw, tuple):
            raise WorldrepError(f"[{index}] used on {self.raw!r}, which is not a combination")
        if index >= len(self.raw):
            raise WorldrepError(f"[{index}] is out of range for {self.raw!r}")
        return GridValue(self.raw[index])

    def attribute(self, attr: str) -> GridValue:
        if isinstance(self.raw, dict):
            if attr not in self.raw:
                raise WorldrepError(f"'.{attr}': the grid value {self.raw} has no key '{attr}'; "
                                    f"allowed: {', '.join(map(str, self.raw))}")
            value = self.raw[attr]
            return GridValue(tuple(value) if isinstance(value, list) else value)
        if attr == "name":
            return GridValue(task_name(self.raw))
        if attr == "number":
            return GridValue(task_number(self.raw))
        if attr == "names" and isinstance(self.raw, tuple):
            return GridValue(tuple(task_name(v) for v in self.raw))
        raise WorldrepError(f"unknown attribute '.{attr}' of {self.raw!r}; allowed: .name, "
                            ".number (tasks), .names (combinations of tasks)")


def task_name(value: Any) -> str:
    """A task given by number (1..7, as int or digit string) or name -> its registered name."""
    from ..tasks.registry import TASKS, get_task

    if isinstance(value, tuple):
        raise WorldrepError(f"{value!r} is a combination, not a task")
    text = str(value)
    if text.isdigit():
        get_task("distance")  # loads the registry
        by_number = {t.number: t.name for t in TASKS.values() if t.number}
        if int(text) not in by_number:
            raise WorldrepError(f"no task numbered {text}; allowed: "
                                + ", ".join(f"{k} ({v})" for k, v in sorted(by_number.items())))
        return by_number[int(text)]
    return get_task(text).name


def task_number(value: Any) -> int:
    from ..tasks.registry import get_task

    task = get_task(task_name(value))
    if not task.number:
        raise WorldrepError(f"task '{task.name}' has no paper number")
    return task.number


# -- rendering ------------------------------------------------------------------------------
def _lookup(name: str, accessors: str, bindings: dict[str, GridValue]) -> GridValue:
    if name not in bindings:
        known = ", ".join(bindings) or "none"
        raise WorldrepError(f"unknown template variable '{{{name}}}' (grid variables: {known})")
    value = bindings[name]
    for index, attr in ACCESSOR.findall(accessors):
        value = value.item(int(index)) if index else value.attribute(attr)
    return value


def render(obj: Any, bindings: dict[str, GridValue], lists: dict[str, list] | None = None,
           budget: list[int] | None = None) -> Any:
    """Substitute placeholders in every string of a nested structure; expand `for` items.
    `budget` ([n]) is the number of values rendering may still make (shared by a study's
    steps, so that `for` lists cannot multiply without bound)."""
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise WorldrepError(f"the study's steps hold more than {MAX_RENDERED:,} values "
                                "once their templates and 'for' lists are expanded")
    if isinstance(obj, str):
        whole = PLACEHOLDER.fullmatch(obj)
        if whole:
            return _lookup(whole.group(1), whole.group(2), bindings).native()
        return PLACEHOLDER.sub(lambda m: _lookup(m.group(1), m.group(2), bindings).text(), obj)
    if isinstance(obj, dict):
        return {render(k, bindings, lists, budget): render(v, bindings, lists, budget)
                for k, v in obj.items()}
    if isinstance(obj, list):
        out: list = []
        for item in obj:
            if isinstance(item, dict) and "for" in item:
                out.extend(_render_for(item, bindings, lists or {}, budget))
            else:
                out.append(render(item, bindings, lists, budget))
        return out
    return obj


def _render_for(item: dict, bindings: dict[str, GridValue], lists: dict[str, list],
                budget: list[int] | None = None) -> list:
    """A list element `{for: {t: tasks}, where: ..., item: X}` becomes one X per binding."""
    extra = set(item) - {"for", "where", "item"}
    if extra or "item" not in item:
        raise WorldrepError("a 'for' list element takes the keys for, where, item; got "
                            + ", ".join(sorted(item)))
    grid = render(item["for"], bindings, lists, budget)
    return [render(item["item"], {**bindings, **inner}, lists, budget)
            for inner in expand(grid, item.get("where"), lists)]


# -- grids ------------------------------------------------------------------------------------
def _values(var: str, spec: Any, lists: dict[str, list]) -> list:
    if isinstance(spec, str):
        if spec not in lists:
            raise WorldrepError(f"grid '{var}': no list named '{spec}' (lists: "
                                f"{', '.join(lists) or 'none'}); give a list or a list name")
        return list(lists[spec])
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict):
        return _generated(var, spec, lists)
    return [spec]


def _generator(var: str, spec: dict) -> tuple[str, Any, int]:
    """A generator's kind, its argument (range bounds, or the spec of its base values) and
    k, checked; nothing is made."""
    kinds = [k for k in spec if k in GENERATORS]
    extra = set(spec) - set(GENERATORS) - {"k"}
    if len(kinds) != 1 or extra:
        raise WorldrepError(f"grid '{var}': a generator is one of {', '.join(GENERATORS)} "
                            f"(with k for combinations/permutations); got {sorted(spec)}")
    kind = kinds[0]
    if kind == "range":
        bounds = spec[kind]
        if not (isinstance(bounds, list) and len(bounds) in (2, 3)
                and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)):
            raise WorldrepError(f"grid '{var}': range takes integers [start, stop] or "
                                f"[start, stop, step]; got {bounds!r}")
        if len(bounds) == 3 and bounds[2] == 0:
            raise WorldrepError(f"grid '{var}': a range's step must not be 0; allowed: any "
                                "other integer")
        return kind, bounds, 0
    k = {"pairs": 2, "triples": 3}.get(kind, spec.get("k"))
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise WorldrepError(f"grid '{var}': {kind} needs an integer k >= 1")
    return kind, spec[kind], k


def _size(var: str, spec: Any, lists: dict[str, list], limit: int) -> int:
    """How many values a grid variable takes, computed without making them (a generator's
    base may not exceed `limit` values either)."""
    if not isinstance(spec, dict):
        return len(_values(var, spec, lists)) if isinstance(spec, str | list) else 1
    kind, arg, k = _generator(var, spec)
    if kind == "range":
        return len(range(*arg))
    n = _size(var, arg, lists, limit)
    if n > limit:
        raise WorldrepError(f"grid '{var}': {kind} of {n:,} values; at most {limit:,} allowed")
    return math.perm(n, k) if kind == "permutations" else math.comb(n, k)


def _generated(var: str, spec: dict, lists: dict[str, list]) -> list:
    kind, arg, k = _generator(var, spec)
    if kind == "range":
        return list(range(*arg))
    make = itertools.permutations if kind == "permutations" else itertools.combinations
    return [tuple(c) for c in make(_values(var, arg, lists), k)]


def grid_size(grid: dict | None, lists: dict[str, list], limit: int = MAX_STEPS) -> int:
    """The number of bindings of a grid before `where` (the product of its sizes)."""
    if not grid or not isinstance(grid, dict):
        return 1
    total = 1
    for name in grid:
        total *= _size(str(name), grid[name], lists, limit)
        if total > limit:  # products of big sizes are refused early, never computed whole
            return total
    return total


def expand(grid: dict | None, where: Any, lists: dict[str, list],
           limit: int = MAX_STEPS) -> Iterator[dict[str, GridValue]]:
    """Every binding of the grid's variables (product, in declared order) that passes `where`.
    A grid of more than `limit` bindings is refused before any is made."""
    if not grid:
        yield {}
        return
    if not isinstance(grid, dict):
        raise WorldrepError("grid must map variable names to values, e.g. {x: [1, 2, 3]}")
    names = list(grid)
    for name in names:
        if not re.fullmatch(r"[A-Za-z_]\w*", str(name)):
            raise WorldrepError(f"grid variable '{name}' must be an identifier")
    size = grid_size(grid, lists, limit)
    if size > limit:
        raise WorldrepError(f"the grid expands to {size:,} combinations; a study may have at "
                            f"most {limit:,} steps (raise the study's max_steps if this is "
                            "meant)")
    conditions = [where] if isinstance(where, str) else list(where or [])
    checks = [_compile_condition(c, names) for c in conditions]
    for combo in itertools.product(*(_values(n, grid[n], lists) for n in names)):
        raw = {n: (tuple(v) if isinstance(v, list) else v) for n, v in zip(names, combo, strict=True)}
        if all(check(_plain(raw)) for check in checks):
            yield {n: GridValue(v) for n, v in raw.items()}


def _plain(raw: dict) -> dict:
    """Mapping values take part in `where` through their 'name'."""
    return {k: (v.get("name") if isinstance(v, dict) else v) for k, v in raw.items()}


# -- where conditions: a tiny safe expression language --------------------------------------
_ALLOWED = (ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.Name, ast.Constant,
            ast.Load, ast.And, ast.Or, ast.Not, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt,
            ast.GtE, ast.In, ast.NotIn, ast.Subscript, ast.Tuple, ast.List, ast.BinOp,
            ast.Mod, ast.Add, ast.Sub)


def _compile_condition(text: Any, names: list[str]):
    if not isinstance(text, str):
        raise WorldrepError(f"where: expected an expression such as 'x != y', got {text!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise WorldrepError(f"where: cannot parse '{text}'") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise WorldrepError(f"where: '{text}' uses {type(node).__name__}; allowed: "
                                "comparisons, and/or/not, in, +, -, %, [index]")
        if isinstance(node, ast.Name) and node.id not in names:
            raise WorldrepError(f"where: '{text}' names '{node.id}', which is not a grid "
                                f"variable ({', '.join(names)})")
    return lambda raw: bool(_Where(text, raw).value(tree.body))


_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}


class _Where:
    """Evaluates a checked `where` tree on one binding. Nothing is executed and nothing grows
    without bound: % takes numbers only (no string formatting), + builds at most MAX_TEXT
    items, and a bad operation (x[9] of a pair, x % 0, a task name minus 1) is a
    WorldrepError naming the expression."""

    def __init__(self, text: str, env: dict):
        self.text, self.env = text, env

    def fail(self, why: str) -> WorldrepError:
        return WorldrepError(f"where: '{self.text}' {why}")

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.env[node.id]
        if isinstance(node, ast.Tuple | ast.List):
            return tuple(self.value(e) for e in node.elts)
        if isinstance(node, ast.BoolOp):
            values = (bool(self.value(v)) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            return not self.value(node.operand)
        if isinstance(node, ast.Compare):
            left = self.value(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.value(comparator)
                try:
                    if not _COMPARE[type(op)](left, right):
                        return False
                except TypeError:
                    raise self.fail(f"compares {left!r} with {right!r}") from None
                left = right
            return True
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        raise self.fail(f"uses {type(node).__name__}")

    def subscript(self, node: ast.Subscript) -> Any:
        seq, index = self.value(node.value), self.value(node.slice)
        if not isinstance(seq, tuple | list | str) or not isinstance(index, int):
            raise self.fail(f"indexes {seq!r} with {index!r}; allowed: a combination's "
                            "[0], [1], ...")
        if not -len(seq) <= index < len(seq):
            raise self.fail(f"indexes {seq!r} at [{index}], which is out of range")
        return seq[index]

    def binop(self, node: ast.BinOp) -> Any:
        a, b = self.value(node.left), self.value(node.right)
        number = (int, float)
        if isinstance(node.op, ast.Mod):
            if not (isinstance(a, number) and isinstance(b, number)):
                raise self.fail(f"takes % of {a!r} and {b!r}; % is for numbers only")
            if b == 0:
                raise self.fail("divides by zero (% 0)")
            return a % b
        if isinstance(node.op, ast.Sub):
            if not (isinstance(a, number) and isinstance(b, number)):
                raise self.fail(f"subtracts {b!r} from {a!r}; - is for numbers only")
            return a - b
        both = (isinstance(a, number) and isinstance(b, number)) or type(a) is type(b)
        if not both or not isinstance(a, number | str | tuple):
            raise self.fail(f"adds {a!r} and {b!r}")
        if not isinstance(a, number) and len(a) + len(b) > MAX_TEXT:
            raise self.fail(f"builds something longer than {MAX_TEXT} items")
        return a + b

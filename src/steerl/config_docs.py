"""The configuration reference, generated from the pydantic sections of ``steerl.config``.

Every field's one-line description is the comment written beside it in its section's module
(``steerl/configs/*.py``, the one home of defaults), so the reference cannot drift from the
code.
"""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from steerl import config


@dataclass(frozen=True)
class FieldDoc:
    key: str  # dotted key, e.g. "rollout.group_size"
    type: str
    default: str
    description: str


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the comment on the last line of its definition (multi-line ones too)."""
    out: dict[str, str] = {}
    for klass in reversed(model.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments = {
            tok.start[0]: tok.string.lstrip("# ").strip()
            for tok in tokenize.generate_tokens(io.StringIO(src).readline)
            if tok.type == tokenize.COMMENT
        }
        body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                for line in range(node.end_lineno or node.lineno, node.lineno - 1, -1):
                    if line in comments:
                        out[node.target.id] = comments[line]
                        break
    return out


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _submodel(ann: Any) -> type[BaseModel] | None:
    cands = [ann, *typing.get_args(ann)]
    for c in cands:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def field_docs(model: type[BaseModel] = config.Config, prefix: str = "") -> list[FieldDoc]:
    """All keys of ``model`` (recursing into sections), with type, default and description."""
    rows: list[FieldDoc] = []
    comments = _comments(model)
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _submodel(f.annotation)
        is_list = typing.get_origin(f.annotation) is list or any(
            typing.get_origin(a) is list for a in typing.get_args(f.annotation)
        )
        if sub is not None and not is_list and typing.get_origin(f.annotation) is not dict:
            own = sub.__dict__.get("__doc__") or ""
            desc = comments.get(name) or own.strip().split("\n")[0]
            rows.append(FieldDoc(key, "section", "", desc))
            rows.extend(field_docs(sub, key + "."))
            continue
        default = "required" if f.is_required() else _default_text(f.get_default())
        rows.append(FieldDoc(key, _type_name(f.annotation), default, comments.get(name, "")))
        if sub is not None and is_list:
            rows.extend(field_docs(sub, key + "[]."))
        elif sub is not None and typing.get_origin(f.annotation) is dict:
            rows.extend(field_docs(sub, key + ".<key>."))  # e.g. tune.space.<key>.type
    return rows


def _default_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "{...}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def markdown_reference() -> str:
    """The reference as Markdown: one table per top-level section."""
    lines = [
        "# Configuration reference",
        "",
        "Every key of a recipe, generated from `steerl.config` (the one home of defaults).",
        "Set keys in the recipe's YAML or on the command line as dotted overrides",
        "(`steerl train default rollout.group_size=16`). `[]` marks the items of a list,",
        "`<key>` the entries of a mapping.",
        "",
    ]
    section = None
    for row in field_docs():
        top = row.key.split(".")[0]
        if top != section:
            section = top
            lines += ["", f"## `{top}`", ""]
            if row.type == "section" and row.description:
                lines += [row.description[0].upper() + row.description[1:] + ".", ""]
            lines += ["| key | type | default | description |", "|---|---|---|---|"]
            if row.type == "section" and row.key == top:
                continue
        cell = [f"`{row.key}`", _cell(row.type), _cell(row.default), _cell(row.description)]
        lines.append("| " + " | ".join(cell) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if text else ""

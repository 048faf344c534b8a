"""Griffe extension for the docs build: what mkdocstrings cannot read in xs2mask's docstrings alone.

* Sphinx cross-reference roles (``:func:`xs2mask.predict```, ``:class:`~xs2mask.exceptions.ReadError```)
  become inline code instead of being printed as they are; as in Sphinx, ``~`` shows the last name.
* The ``.s2mask`` accessor's methods are made by a wrapper, ``predict = _method(inference.predict)``,
  which static analysis sees as plain attributes: each becomes a method with the wrapped function's
  docstring and signature, less the first parameter (the object the accessor hangs on).
* Attributes sections written ``name : description`` (numpy's form is ``name : type``) get the text
  as the description, not as the type.

Listed in ``mkdocs.yml`` (``extensions`` of the mkdocstrings handler); only the docs build uses it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# "name : description" in an Attributes section (the numpy form is "name : type"); a type has no space.
_ENTRY = re.compile(r"^([A-Za-z_][\w, ]*) : (\S+\s.*)$")
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")
_ACCESSOR = "xs2mask.accessor._S2MaskAccessor"


def _attribute_descriptions(text: str) -> str:
    """Move each ``name : description`` line of an Attributes section to ``name`` + indented description."""
    lines, out, in_section = text.split("\n"), [], False
    for i, line in enumerate(lines):
        if line == "Attributes" and i + 1 < len(lines) and set(lines[i + 1]) == {"-"}:
            in_section = True
        elif not line.strip():
            in_section = False
        entry = _ENTRY.match(line) if in_section else None
        out.extend([entry[1], f"    {entry[2]}"] if entry else [line])
    return "\n".join(out)


def _as_code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class XS2MaskDocs(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, _attribute_descriptions(obj.docstring.value))

    def on_class(self, *, cls: griffe.Class, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if cls.path != _ACCESSOR:
            return
        for name, member in list(cls.members.items()):
            if not (member.is_attribute and isinstance(member.value, griffe.ExprCall)):
                continue
            (wrapped,) = member.value.arguments
            target = loader.modules_collection[wrapped.canonical_path]
            method = griffe.Function(
                name,
                lineno=member.lineno,
                endlineno=member.endlineno,
                parameters=griffe.Parameters(*list(target.parameters)[1:]),
                returns=target.returns,
            )
            method.docstring = _without_first_parameter(target.docstring, method)
            cls.set_member(name, method)


def _without_first_parameter(docstring: griffe.Docstring, parent: griffe.Function) -> griffe.Docstring:
    """The wrapped function's docstring for the method, less the entry of the parameter it drops."""
    quiet = {**docstring.parser_options, "warn_unknown_params": False, "warn_missing_types": False}
    copy = griffe.Docstring(docstring.value, parent=parent, parser=docstring.parser, parser_options=quiet)
    for section in copy.parsed:  # parsed once and cached: the rendering sees this list
        if section.kind is griffe.DocstringSectionKind.parameters:
            section.value = section.value[1:]
    return copy

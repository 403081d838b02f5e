"""HTML pages from Jinja2 templates (<package>/templates/) with autoescaping: every value a template writes is escaped
unless the code that made it marks it Markup, so a string from data (a name, a path, a warning) cannot become markup.
Mark only what the code generated itself (a table pandas escaped cell by cell)."""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from cxr.intervals import interval_text, value_text

__all__ = ["Markup", "render_page"]


def render_page(package: str, template: str, **context) -> str:
    return _environment(package).get_template(template).render(**context)


@cache
def _environment(package: str) -> Environment:
    """StrictUndefined: a value the template names and the code did not pass fails the page, never renders empty."""
    env = Environment(loader=PackageLoader(package), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    # numbers as the f-strings of the console and the model card write them: {{ x|fmt(".4f") }} is f"{x:.4f}"
    env.filters.update(fmt=format, value=value_text, interval=interval_text)
    return env

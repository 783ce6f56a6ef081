"""Sphinx configuration of the course website (`make site`, built by docs/build.py from a staging folder).

Sphinx with myst-nb and sphinx-book-theme, the engine of Jupyter Book 1: myst-nb renders the committed, executed
notebooks without running them, autodoc writes the API page from companion's docstrings, and the book theme gives
the sidebar and previous/next links in course order (the root toctree, generated from `companion.course.COURSE`).
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent

project = "Transfer Learning vs Multi-task Learning"
author = "the course authors"
copyright = "the course authors, MIT licence"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx_design"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "build.py", "conf.py"]
templates_path: list[str] = []
html_static_path = ["_static"] if (HERE / "_static").is_dir() else []
html_css_files = ["course.css"]  # outputs wrap inside their column (see the file)

# Notebooks are shown exactly as committed: executed once by `make notebooks`, never re-run here.
nb_execution_mode = "off"
nb_output_stderr = "show"
nb_ipywidgets_js: dict = {}  # widget outputs are reduced to their text at staging: nothing to load from a CDN
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "tasklist"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]

# MathJax from the site itself when build.py vendored it (the site then works offline), else from its CDN.
if (HERE / "_static" / "mathjax" / "tex-mml-chtml.js").is_file():
    mathjax_path = "mathjax/tex-mml-chtml.js"

# The API page: docstrings as written (backticks name code), members in source order, signatures with hints.
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "signature"
autosummary_generate = False
default_role = "code"
add_module_names = False

html_theme = "sphinx_book_theme"
html_title = project
html_favicon = "_static/favicon.svg"
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    # one search box: the sidebar's field (the article header keeps its icon on narrow screens, where the sidebar
    # is folded away); the theme would also put a field in the page header
    "navbar_persistent": [],
}
# the search page has its own search field in the page: its sidebar leaves the theme's out
html_sidebars = {"search": ["navbar-logo.html", "icon-links.html", "sbt-sidebar-nav.html"]}

# companion's docstrings are plain prose in Markdown's spirit, not reStructuredText: backticks for code and
# **double stars** for a term in bold (the same markup in both). Those spans are kept as markup; outside them,
# characters RST would read as markup (``|g_w|``, ``x**2``, ``name_``) are escaped so they show as written.
_CODE = re.compile(r"(``.+?``|`[^`]+`|(?<![\w*])\*\*(?=[^\s*])[^*]*?(?<=[^\s*])\*\*(?![\w*]))")
_MARKUP = re.compile(r"([*|\\]|_(?=\W|$)|(?<=\s)_)")


def _plain(line: str) -> str:
    parts = _CODE.split(line)
    return "".join(rf"\ {p}\ " if i % 2 else _MARKUP.sub(r"\\\1", p) for i, p in enumerate(parts))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _escape_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    out: list[str] = []
    prev = ""
    for line in lines:
        # a line indented deeper than the one before it continues that paragraph (an aligned formula), unless it
        # continues a list item or a literal block: RST would read it as a definition list
        if (
            line.strip()
            and prev.strip()
            and _indent(line) > _indent(prev)
            and not prev.rstrip().endswith("::")
            and not prev.lstrip().startswith(("- ", "* "))
        ):
            line = " " * _indent(prev) + line.lstrip()
        out.append(_plain(line))
        prev = line if line.strip() else prev
    lines[:] = out


def setup(app):
    app.connect("autodoc-process-docstring", _escape_docstring)


# The theme's light/dark switch starts at "auto": left empty, the theme logs a console error on a first visit.
html_context = {"default_mode": "auto"}

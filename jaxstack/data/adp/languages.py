"""The set of values accepted by ``CodeAction.language``.

ADP release 1.0 types ``CodeAction.language`` as a large ``Literal`` that grew out of the code-fence
tags found in Code-Feedback (including a few misspellings that occur in that data, such as
``"javasript"`` and ``"dockefile"``, which are kept so that such records still validate). This list
is jaxstack's own compilation: common programming, shell, query, markup and configuration language
tags as they appear after a Markdown fence, plus the aliases and misspellings that agent datasets
are known to use. It is stored as a sorted tuple so that the JSON Schema ``enum`` is deterministic.

Use :func:`normalise_fence_language` to map a raw Markdown fence tag (``"Python3"``, ``"c++"``,
``"shell-session"``) onto a value of this set before building a ``CodeAction``.
"""

from __future__ import annotations

_LANGUAGE_GROUPS: dict[str, tuple[str, ...]] = {
    "general purpose": (
        "ada", "agda", "c", "chapel", "clojure", "cobol", "coffeescript", "coq", "cpp", "crystal",
        "cs", "csharp", "cuda", "cython", "d", "dart", "delphi", "elixir", "elisp", "elm",
        "erlang", "fortran", "fsharp", "go", "golang", "groovy", "haskell", "haxe", "idris",
        "isabelle", "java", "javascript", "jl", "js", "julia", "kotlin", "lean", "lisp", "lua",
        "matlab", "mathematica", "maple", "ml", "nim", "nix", "objc", "objectivec", "ocaml",
        "octave", "pascal", "perl", "php", "prolog", "py", "python", "python2", "python3", "r",
        "racket", "ruby", "rust", "sage", "sagemath", "scala", "scheme", "scilab", "smalltalk",
        "sml", "solidity", "stan", "swift", "tcl", "ts", "typescript", "vb", "vba", "vbnet",
        "vbscript", "verilog", "vhdl", "systemverilog", "wolfram", "zig", "wasm", "asm",
        "assembly", "nasm", "llvm", "arduino", "actionscript", "as3", "applescript",
        "autohotkey", "basic", "brainfuck", "forth", "hlsl", "glsl", "qsharp", "openqasm",
        "pinescript", "powershell", "awk", "sed", "m4",
    ),
    "shell": (
        "bash", "sh", "shell", "zsh", "fish", "console", "commandline", "terminal", "bat",
        "batch", "batchfile", "cmd", "ps1",
    ),
    "query": (
        "sql", "mysql", "sqlite", "postgres", "postgresql", "pgsql", "plpgsql", "plsql", "tsql",
        "cql", "cypher", "sparql", "graphql", "mongodb", "mongo", "redis", "xpath", "xquery",
        "kusto", "dax", "aql", "usql",
    ),
    "markup and styles": (
        "html", "xhtml", "xml", "svg", "css", "scss", "sass", "less", "markdown", "md", "mdx",
        "latex", "tex", "bibtex", "rst", "restructuredtext", "asciidoc", "xslt", "dtd", "troff",
        "groff", "mermaid", "plantuml",
    ),
    "web frameworks and templates": (
        "jsx", "tsx", "vue", "svelte", "react", "angular", "jquery", "node", "npm", "ejs", "erb",
        "jinja", "django", "twig", "handlebars", "liquid", "blade", "smarty", "freemarker",
        "velocity", "vtl", "jsp", "asp", "aspx", "razor", "coldfusion", "cfml", "php7",
    ),
    "configuration and build": (
        "json", "jsonc", "json5", "yaml", "yml", "toml", "ini", "cfg", "conf", "env", "dotenv",
        "properties", "hcl", "terraform", "dockerfile", "docker", "makefile", "make", "cmake",
        "gradle", "maven", "meson", "bazel", "nginx", "apache", "protobuf", "proto", "thrift",
        "flatbuffers", "kconfig", "jenkins", "cabal", "qmake", "puppet", "csv", "tsv", "http",
        "diff", "patch", "git", "regex",
    ),
    "plain text and pseudo-code": (
        "text", "txt", "plaintext", "output", "code", "pseudo", "pseudocode", "pseudo_code",
        "math",
    ),
    "misspellings and odd tags seen in agent data": (
        "javasript", "javascipt", "dockefile",
    ),
}

CODE_LANGUAGES: tuple[str, ...] = tuple(
    sorted({name for group in _LANGUAGE_GROUPS.values() for name in group})
)
"""Every value accepted by ``CodeAction.language``, sorted."""

_CODE_LANGUAGE_SET = frozenset(CODE_LANGUAGES)

_FENCE_ALIASES: dict[str, str] = {
    "c++": "cpp",
    "cxx": "cpp",
    "c#": "csharp",
    "f#": "fsharp",
    "objective-c": "objc",
    "shell-session": "console",
    "shellsession": "console",
    "bash-session": "console",
    "ipython": "python",
    "ipython3": "python",
    "py3": "python3",
    "javascript-react": "jsx",
    "typescript-react": "tsx",
    "golang": "golang",
    "postgresql": "postgresql",
    "vue.js": "vue",
    "node.js": "node",
    "nodejs": "node",
    "objective c": "objc",
    "plain": "text",
    "none": "text",
}


def is_code_language(value: str) -> bool:
    """Whether ``value`` is accepted by ``CodeAction.language`` (case-sensitive, as on the wire)."""
    return value in _CODE_LANGUAGE_SET


def normalise_fence_language(tag: str, *, default: str = "python") -> str | None:
    """Map a Markdown code-fence tag onto a ``CodeAction.language`` value.

    Args:
      tag: the text after the opening fence, e.g. ``"Python"`` or ``"c++ {linenos}"``.
      default: the language to use when the fence has no tag at all.

    Returns:
      A member of :data:`CODE_LANGUAGES`, or ``None`` when the tag is not recognised.
    """
    name = tag.strip().split(maxsplit=1)[0].lower() if tag.strip() else ""
    if not name:
        return default
    name = _FENCE_ALIASES.get(name, name)
    return name if name in _CODE_LANGUAGE_SET else None

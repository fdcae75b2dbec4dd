"""The CDL language server (``convdsl lsp``): the compiler's front end, answering an editor.

Data flows like this: ``tokens`` (the grammar's lexer, tolerant) and the
parser's AST give ``index`` (names, definitions, references); ``recording``
(the elaborator, taking notes) and ``analysis`` (one document: problems,
notes, statistics) give what ``view`` assembles per file; the features
(``diagnostics``, ``hints``, ``hover``, ``completion``, ``navigation``,
``formatting``) turn that into LSP answers; ``server`` wires them to pygls.
"""

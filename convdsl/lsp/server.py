"""``convdsl lsp``: the language server, on pygls.

Open documents are analysed (``convdsl.lsp.analysis``) on open and after
every change; a burst of changes is analysed once, after ``DEBOUNCE_S`` of
quiet.  Requests (hover, hints, completion ...) wait for the analysis of the
text they are about.  Diagnostics are published per file from every open
document's analysis: an error inside an imported file appears in that file
too, and disappears from it when the document that found it is fixed or
closed.  A document that imports a file that changed is analysed again.

No user text can crash the server: the front end reports user mistakes as
``ConvDSLError``s, which become diagnostics; anything else is a bug, logged
and shown as one "internal error" diagnostic, and the server goes on.
"""
from __future__ import annotations

import asyncio
import gc
import traceback
from pathlib import Path

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from convdsl.errors import ConvDSLError, Span
from convdsl.lsp import completion, diagnostics, hints, hover, navigation
from convdsl.lsp.analysis import Analysis, ModuleCache, Problem, Sources, analyze, finish
from convdsl.lsp.convert import Lines
from convdsl.lsp.formatting import format_document
from convdsl.lsp.index import FileIndex
from convdsl.lsp.view import FileView, build
from convdsl.version import __version__

DEBOUNCE_S = 0.015  # quiet time after a change before it is analysed
# The collector's young-generation size and full-collection spacing while serving.  An analysis
# of a long file makes ~10^6 objects that live until the next one (trees, graphs, notes); with
# Python's defaults (700, 10, 10) they trigger full collections over everything the server
# holds several times per edit: 0.3-0.8 s of a 2,000-line network's 1.4 s.  Only a networkx
# graph per analysis needs the collector (it holds cycles), so collecting rarely costs memory
# only briefly.
GC_THRESHOLDS = (10_000, 10, 100)
MAX_WORKSPACE_FILES = 2000  # .cdl files searched for references


class InternalError(ConvDSLError):
    kind = "internal error"


class CDLServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("convdsl", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.sources = Sources()
        self.cache = ModuleCache()
        self.analyses: dict[str, Analysis] = {}
        self.good_index: dict[str, FileIndex] = {}  # last index of each open file that parsed
        self.uris: dict[str, str] = {}  # path -> uri of the open documents
        self.versions: dict[str, int | None] = {}
        self.pending: dict[str, asyncio.Task] = {}
        self.contributions: dict[str, dict[str, list[lsp.Diagnostic]]] = {}  # shown in path <- found by path
        self.published: dict[str, list[lsp.Diagnostic]] = {}

    # ---- paths and documents ---------------------------------------------------------------
    @staticmethod
    def path_of(uri: str) -> str:
        fs = to_fs_path(uri)
        return str(Path(fs).resolve()) if fs else uri

    def uri_of(self, path: str) -> str:
        return self.uris.get(path) or from_fs_path(path) or path

    def lines_of(self, path: str) -> Lines | None:
        text = self.sources.maybe(path)
        return Lines(text) if text is not None else None

    def location_of(self, path: str) -> tuple[str, Lines] | None:
        lines = self.lines_of(path)
        return (self.uri_of(path), lines) if lines is not None else None

    def open_doc(self, uri: str, text: str, version: int | None) -> None:
        path = self.path_of(uri)
        self.uris[path] = uri
        self.sources.open[path] = text
        self.versions[path] = version
        self.schedule(path, 0.0)

    def change_doc(self, uri: str, version: int | None) -> None:
        path = self.path_of(uri)
        self.sources.open[path] = self.workspace.get_text_document(uri).source
        self.versions[path] = version
        self.schedule(path, DEBOUNCE_S)

    def close_doc(self, uri: str) -> None:
        path = self.path_of(uri)
        task = self.pending.pop(path, None)
        if task is not None:
            task.cancel()
        self.sources.open.pop(path, None)
        self.analyses.pop(path, None)
        self.good_index.pop(path, None)
        self._contribute(path, {})
        self.uris.pop(path, None)
        self._reanalyze_importers(path)

    # ---- analysis ---------------------------------------------------------------------------------
    def schedule(self, path: str, delay: float) -> None:
        task = self.pending.get(path)
        if task is not None and not task.done():
            task.cancel()
        self.pending[path] = asyncio.ensure_future(self._later(path, delay))

    async def _later(self, path: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        self.analyze_now(path)

    async def ready(self, path: str) -> None:
        """Wait until the analysis of the current text of ``path`` is done."""
        while True:
            task = self.pending.get(path)
            if task is None or task.done():
                return
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                await asyncio.sleep(0)  # replaced by a newer change: wait for that one

    def analyze_now(self, path: str) -> None:
        text = self.sources.open.get(path)
        if text is None:
            return
        gc.disable()  # the collector's share (~7% of a long file's analysis) waits until the diagnostics are out
        try:
            try:
                a = analyze(path, text, self.sources, self.cache, defer=True)
            except Exception as exc:  # a bug, never the user's fault: report it and keep serving
                a = self._internal_error(path, text, exc)
            self._publish(path, text, a)  # the diagnostics go out before the rest of the analysis is done
        finally:
            gc.enable()
        try:
            finish(a)
        except Exception as exc:
            a = self._internal_error(path, text, exc)
            self._publish(path, text, a)
        self.analyses[path] = a
        if a.index is not None and a.clean_parse:
            self.good_index[path] = a.index
        if self._client_can_refresh_hints():
            self.workspace_inlay_hint_refresh(None)
        self._reanalyze_importers(path)

    def _publish(self, path: str, text: str, a: Analysis) -> None:
        found: dict[str, list[lsp.Diagnostic]] = {}
        for p in a.problems:
            lines = Lines(text) if p.file == path else self.lines_of(p.file)
            if lines is None:
                continue
            found.setdefault(p.file, []).append(diagnostics.to_diagnostic(p, lines, self.location_of))
        self._contribute(path, found)

    def _internal_error(self, path: str, text: str, exc: Exception) -> Analysis:
        self.window_log_message(lsp.LogMessageParams(lsp.MessageType.Error, traceback.format_exc()))
        a = Analysis(path, text)
        a.problems.append(Problem(path, Span(path, 1, 1), InternalError(f"{type(exc).__name__}: {exc}",
                                                                         hint="please report this")))
        return a

    def _reanalyze_importers(self, path: str) -> None:
        for other, a in list(self.analyses.items()):
            if other != path and path in a.modules:
                self.schedule(other, DEBOUNCE_S)

    def _contribute(self, source: str, found: dict[str, list[lsp.Diagnostic]]) -> None:
        """Replace what ``source``'s analysis says about each file and publish the files that changed."""
        targets = set(found)
        if source in self.sources.open:
            targets.add(source)  # always: a client waits for the diagnostics of each version
        for target, by_source in self.contributions.items():
            if source in by_source:
                targets.add(target)
        for target in sorted(targets):
            by_source = self.contributions.setdefault(target, {})
            if target in found:
                by_source[source] = found[target]
            else:
                by_source.pop(source, None)
            merged = [d for s in sorted(by_source) for d in by_source[s]]
            if merged == self.published.get(target) and target != source:
                continue
            self.published[target] = merged
            version = self.versions.get(target) if target in self.sources.open else None
            self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(self.uri_of(target), merged, version))

    def _client_can_refresh_hints(self) -> bool:
        try:
            ws = self.client_capabilities.workspace
            return bool(ws and ws.inlay_hint and ws.inlay_hint.refresh_support)
        except Exception:
            return False

    # ---- what features see --------------------------------------------------------------------
    def view(self, path: str) -> FileView | None:
        text = self.sources.maybe(path)
        if text is None:
            return None
        own = self.analyses.get(path)
        index = own.index if own is not None and own.index is not None else self.good_index.get(path)
        if index is None:
            index = self.cache.index(path, self.sources)
        others = [a for p, a in sorted(self.analyses.items()) if p != path]
        return build(path, text, index, own, others)

    def workspace_indexes(self) -> list[FileIndex]:
        """Indexes of the open documents and of the .cdl files in the workspace folders."""
        paths = list(self.sources.open)
        folders = [self.path_of(f.uri) for f in (self.workspace.folders or {}).values()] \
            if self.workspace.folders else []
        if not folders and self.workspace.root_path:
            folders = [self.workspace.root_path]
        for folder in folders:
            for n, p in enumerate(sorted(Path(folder).rglob("*.cdl"))):
                if n >= MAX_WORKSPACE_FILES:
                    break
                paths.append(str(p.resolve()))
        out = []
        for p in dict.fromkeys(paths):
            ix = self.analyses[p].index if p in self.analyses and self.analyses[p].index else self.cache.index(p, self.sources)
            if ix is not None:
                out.append(ix)
        return out


def create_server() -> CDLServer:
    server = CDLServer()

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: CDLServer, params: lsp.DidOpenTextDocumentParams) -> None:
        ls.open_doc(params.text_document.uri, params.text_document.text, params.text_document.version)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: CDLServer, params: lsp.DidChangeTextDocumentParams) -> None:
        ls.change_doc(params.text_document.uri, params.text_document.version)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: CDLServer, params: lsp.DidCloseTextDocumentParams) -> None:
        ls.close_doc(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_INLAY_HINT, lsp.InlayHintOptions(resolve_provider=False))
    async def inlay_hint(ls: CDLServer, params: lsp.InlayHintParams) -> list[lsp.InlayHint]:
        path = ls.path_of(params.text_document.uri)
        await ls.ready(path)
        view = ls.view(path)
        if view is None:
            return []
        r = params.range
        return hints.inlay_hints(view, r.start.line + 1, r.end.line + 1)

    @server.feature(lsp.TEXT_DOCUMENT_HOVER)
    async def on_hover(ls: CDLServer, params: lsp.HoverParams) -> lsp.Hover | None:
        path = ls.path_of(params.text_document.uri)
        await ls.ready(path)
        view = ls.view(path)
        if view is None:
            return None
        line, col = view.lines.from_lsp(params.position)
        return hover.hover(view, line, col, ls.view)

    @server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=["(", ",", "=", ".", "|"]))
    async def on_completion(ls: CDLServer, params: lsp.CompletionParams) -> lsp.CompletionList:
        path = ls.path_of(params.text_document.uri)
        await ls.ready(path)
        text = ls.sources.maybe(path) or ""
        line, col = Lines(text).from_lsp(params.position)
        own = ls.analyses.get(path)
        index = own.index if own is not None and own.clean_parse else ls.good_index.get(path)
        if index is None and own is not None:
            index = own.index  # what parsed of a file that never parsed whole
        return completion.complete(text, line, col, index)

    @server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
    async def on_definition(ls: CDLServer, params: lsp.DefinitionParams) -> lsp.Location | None:
        path = ls.path_of(params.text_document.uri)
        await ls.ready(path)
        view = ls.view(path)
        if view is None or view.index is None:
            return None
        line, col = view.lines.from_lsp(params.position)
        return navigation.definition(view.index, line, col, ls.location_of)

    @server.feature(lsp.TEXT_DOCUMENT_REFERENCES)
    async def on_references(ls: CDLServer, params: lsp.ReferenceParams) -> list[lsp.Location]:
        path = ls.path_of(params.text_document.uri)
        await ls.ready(path)
        view = ls.view(path)
        if view is None or view.index is None:
            return []
        line, col = view.lines.from_lsp(params.position)
        return navigation.references(view.index, line, col, ls.workspace_indexes(), ls.location_of,
                                     params.context.include_declaration)

    @server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
    async def on_symbols(ls: CDLServer, params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
        path = ls.path_of(params.text_document.uri)
        await ls.ready(path)
        view = ls.view(path)
        return navigation.document_symbols(view) if view is not None else []

    @server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
    async def on_format(ls: CDLServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
        path = ls.path_of(params.text_document.uri)
        text = ls.sources.maybe(path)
        return format_document(text, path) if text is not None else None

    @server.feature(lsp.TEXT_DOCUMENT_PREPARE_RENAME)
    async def on_prepare_rename(ls: CDLServer, params: lsp.PrepareRenameParams) -> lsp.Range | None:
        path = ls.path_of(params.text_document.uri)
        await ls.ready(path)
        view = ls.view(path)
        if view is None or view.index is None:
            return None
        line, col = view.lines.from_lsp(params.position)
        try:
            return navigation.prepare_rename(view.index, line, col, view.lines)
        except navigation.RenameRefused:
            return None

    @server.feature(lsp.TEXT_DOCUMENT_RENAME)
    async def on_rename(ls: CDLServer, params: lsp.RenameParams) -> lsp.WorkspaceEdit | None:
        path = ls.path_of(params.text_document.uri)
        await ls.ready(path)
        view = ls.view(path)
        if view is None or view.index is None:
            return None
        line, col = view.lines.from_lsp(params.position)
        try:
            return navigation.rename(view.index, line, col, params.new_name, view.lines, params.text_document.uri)
        except navigation.RenameRefused as e:
            ls.window_show_message(lsp.ShowMessageParams(lsp.MessageType.Warning, f"cannot rename: {e}"))
            return None

    return server


def main() -> None:
    server = create_server()
    gc.freeze()  # what the imports made lives as long as the server: never traverse it again
    gc.set_threshold(*GC_THRESHOLDS)
    server.start_io()

"""A real LSP session with ``convdsl lsp`` over stdio, driven by pygls's client.

The client runs its asyncio loop on a background thread, so tests stay plain
functions: ``session.hover(uri, line, col)`` waits for the answer.  Every
``textDocument/publishDiagnostics`` and ``window/*Message`` the server sends
is kept, so tests can wait for the diagnostics of a given document version
and check that the server never reported an internal error.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient
from pygls.uris import from_fs_path

TIMEOUT = 30


class Session:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.published: list[lsp.PublishDiagnosticsParams] = []
        self.arrived: dict[tuple[str, int | None], float] = {}  # (uri, version) -> perf_counter() on receipt
        self.messages: list[str] = []  # window/showMessage and logMessage texts
        self.refreshes = 0
        self.cond = threading.Condition()
        self.versions: dict[str, int] = {}
        self.client = self._run(self._start())

    # ---- plumbing -------------------------------------------------------------------------
    def _run(self, coro, timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _notify(self, send, params) -> None:
        """Send a notification from the client's loop thread: the pipe's writer is not thread-safe,
        and a write from this thread could interleave with the loop's answer to a server request."""
        async def go() -> None:
            send(params)

        self._run(go())

    async def _start(self) -> LanguageClient:
        client = LanguageClient("convdsl-tests", "1")

        @client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def diagnostics(params: lsp.PublishDiagnosticsParams) -> None:
            self.arrived.setdefault((params.uri, params.version), time.perf_counter())
            with self.cond:
                self.published.append(params)
                self.cond.notify_all()

        @client.feature(lsp.WINDOW_LOG_MESSAGE)
        def log(params: lsp.LogMessageParams) -> None:
            self.messages.append(params.message)

        @client.feature(lsp.WINDOW_SHOW_MESSAGE)
        def show(params: lsp.ShowMessageParams) -> None:
            self.messages.append(params.message)

        @client.feature(lsp.WORKSPACE_INLAY_HINT_REFRESH)
        def refresh(params: None) -> None:
            self.refreshes += 1

        await client.start_io(sys.executable, "-m", "convdsl", "lsp")
        caps = lsp.ClientCapabilities(
            workspace=lsp.WorkspaceClientCapabilities(inlay_hint=lsp.InlayHintWorkspaceClientCapabilities(
                refresh_support=True)),
            text_document=lsp.TextDocumentClientCapabilities(
                hover=lsp.HoverClientCapabilities(content_format=[lsp.MarkupKind.Markdown]),
                publish_diagnostics=lsp.PublishDiagnosticsClientCapabilities(version_support=True,
                                                                             related_information=True),
                document_symbol=lsp.DocumentSymbolClientCapabilities(hierarchical_document_symbol_support=True),
                rename=lsp.RenameClientCapabilities(prepare_support=True)))
        root_uri = from_fs_path(str(self.root))
        await client.initialize_async(lsp.InitializeParams(
            capabilities=caps, root_uri=root_uri,
            workspace_folders=[lsp.WorkspaceFolder(root_uri, self.root.name)]))
        client.initialized(lsp.InitializedParams())  # (on the loop thread: _start runs there)
        return client

    def close(self) -> None:
        async def stop() -> None:
            await self.client.shutdown_async(None)
            self.client.exit(None)
            await self.client.stop()

        try:
            self._run(stop(), 20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    # ---- documents --------------------------------------------------------------------------
    def open(self, path: Path, text: str | None = None) -> str:
        uri = from_fs_path(str(path.resolve()))
        text = path.read_text() if text is None else text
        self.versions[uri] = self.versions.get(uri, 0) + 1  # never reuse a version: waits match by version
        self._notify(self.client.text_document_did_open, lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(uri=uri, language_id="cdl", version=self.versions[uri], text=text)))
        return uri

    def change(self, uri: str, text: str) -> int:
        """Replace the whole text; returns the new version."""
        self.versions[uri] += 1
        v = self.versions[uri]
        self._notify(self.client.text_document_did_change, lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(uri=uri, version=v),
            [lsp.TextDocumentContentChangeWholeDocument(text=text)]))
        return v

    def edit(self, uri: str, line: int, col: int, end_line: int, end_col: int, text: str) -> int:
        """An incremental edit (0-based LSP positions); returns the new version."""
        self.versions[uri] += 1
        v = self.versions[uri]
        rng = lsp.Range(lsp.Position(line, col), lsp.Position(end_line, end_col))
        self._notify(self.client.text_document_did_change, lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(uri=uri, version=v),
            [lsp.TextDocumentContentChangePartial(range=rng, text=text)]))
        return v

    def close_doc(self, uri: str) -> None:
        self._notify(self.client.text_document_did_close, lsp.DidCloseTextDocumentParams(lsp.TextDocumentIdentifier(uri)))

    def diagnostics(self, uri: str, version: int | None = None, timeout: float = TIMEOUT) -> list[lsp.Diagnostic]:
        """The diagnostics published for ``uri`` (for ``version``, when given): waits for them."""
        def found():
            for p in reversed(self.published):
                if p.uri == uri and (version is None or p.version == version):
                    return p
            return None

        with self.cond:
            ok = self.cond.wait_for(lambda: found() is not None, timeout)
            assert ok, f"no diagnostics for {uri} version {version}"
            return list(found().diagnostics)

    def latest(self, uri: str) -> list[lsp.Diagnostic] | None:
        with self.cond:
            for p in reversed(self.published):
                if p.uri == uri:
                    return list(p.diagnostics)
        return None

    # ---- requests ----------------------------------------------------------------------------
    def _doc(self, uri: str) -> lsp.TextDocumentIdentifier:
        return lsp.TextDocumentIdentifier(uri)

    def hover(self, uri: str, line: int, col: int) -> lsp.Hover | None:
        return self._run(self.client.text_document_hover_async(lsp.HoverParams(self._doc(uri), lsp.Position(line, col))))

    def hints(self, uri: str, lines: int = 10_000) -> list[lsp.InlayHint]:
        rng = lsp.Range(lsp.Position(0, 0), lsp.Position(lines, 0))
        return self._run(self.client.text_document_inlay_hint_async(lsp.InlayHintParams(self._doc(uri), rng))) or []

    def completion(self, uri: str, line: int, col: int) -> list[lsp.CompletionItem]:
        res = self._run(self.client.text_document_completion_async(
            lsp.CompletionParams(self._doc(uri), lsp.Position(line, col))))
        return list(res.items) if isinstance(res, lsp.CompletionList) else list(res or [])

    def definition(self, uri: str, line: int, col: int):
        return self._run(self.client.text_document_definition_async(
            lsp.DefinitionParams(self._doc(uri), lsp.Position(line, col))))

    def references(self, uri: str, line: int, col: int) -> list[lsp.Location]:
        return self._run(self.client.text_document_references_async(lsp.ReferenceParams(
            text_document=self._doc(uri), position=lsp.Position(line, col),
            context=lsp.ReferenceContext(include_declaration=True)))) or []

    def symbols(self, uri: str) -> list[lsp.DocumentSymbol]:
        return self._run(self.client.text_document_document_symbol_async(
            lsp.DocumentSymbolParams(self._doc(uri)))) or []

    def formatting(self, uri: str) -> list[lsp.TextEdit] | None:
        return self._run(self.client.text_document_formatting_async(lsp.DocumentFormattingParams(
            self._doc(uri), lsp.FormattingOptions(tab_size=4, insert_spaces=True))))

    def prepare_rename(self, uri: str, line: int, col: int):
        return self._run(self.client.text_document_prepare_rename_async(
            lsp.PrepareRenameParams(self._doc(uri), lsp.Position(line, col))))

    def rename(self, uri: str, line: int, col: int, new_name: str) -> lsp.WorkspaceEdit | None:
        return self._run(self.client.text_document_rename_async(
            lsp.RenameParams(self._doc(uri), lsp.Position(line, col), new_name)))


def apply_edits(text: str, edits: list[lsp.TextEdit]) -> str:
    """Apply LSP text edits (ASCII text: UTF-16 columns are characters) from last to first."""
    lines = text.split("\n")
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln) + 1)

    def off(p: lsp.Position) -> int:
        return offsets[p.line] + p.character

    for e in sorted(edits, key=lambda e: (e.range.start.line, e.range.start.character), reverse=True):
        text = text[:off(e.range.start)] + e.new_text + text[off(e.range.end):]
    return text

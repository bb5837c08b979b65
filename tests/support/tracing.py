"""OpenTelemetry's SDK with an in-memory exporter, for the tests that read sequent's spans.

A process has one global tracer provider and it cannot be replaced, so it is installed once,
on first use, with a processor that records only while a test asks it to: other tests in the
same worker process run against the same provider but leave nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class _WhileRecording(SpanProcessor):
    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter
        self.on = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.exporter.export([span])


_EXPORTER = InMemorySpanExporter()
_RECORDING = _WhileRecording(_EXPORTER)
_installed = False


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Spans ended inside the block, in the exporter (``get_finished_spans()``)."""
    global _installed  # noqa: PLW0603 - the process's one provider, installed once
    if not _installed:
        provider = TracerProvider()
        provider.add_span_processor(_RECORDING)
        trace.set_tracer_provider(provider)
        _installed = True
    _EXPORTER.clear()
    _RECORDING.on = True
    try:
        yield _EXPORTER
    finally:
        _RECORDING.on = False

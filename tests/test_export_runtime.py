"""export.runtime.quiet() hides the exporter's chatter without touching the process."""

from __future__ import annotations

import logging
import sys

import pytest

from medzoo.export.runtime import quiet


def test_quiet_is_scoped_to_the_exporters(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    root = logging.getLogger()
    level, stdout = root.level, sys.stdout
    onnx_logger = logging.getLogger("onnxscript.optimizer")
    with quiet():
        assert root.level == level and sys.stdout is stdout
        # what onnxruntime.quantization does: logging.warning() from its own file
        record = root.makeRecord(
            "root", logging.WARNING, "/x/site-packages/onnxruntime/quantization/quantize.py", 1,
            "advice", (), None,
        )  # fmt: skip
        root.handle(record)
        onnx_logger.warning("exporter chatter")
        logging.getLogger("medzoo").warning("ours")
        logging.getLogger("someone.else").info("theirs")
        root.error("an error still shows")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["ours", "theirs", "an error still shows"]
    assert root.level == level and not root.filters
    assert logging.getLogger("onnxscript").level == logging.NOTSET

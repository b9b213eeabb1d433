from __future__ import annotations

from consumer.engine.output import OutputCapture


def test_errids_found_across_chunk_boundaries() -> None:
    capture = OutputCapture()
    for chunk in [b"build ok\nERR", b"ID: E_ONE\nERRID:", b"  E_TWO\n", b"ERRID: E_THREE"]:
        capture.feed(chunk)
    capture.close()
    assert capture.errids == {"E_ONE", "E_TWO", "E_THREE"}


def test_error_id_as_a_whole_token() -> None:
    capture = OutputCapture(error_id="compile.failed")
    capture.feed(b"step: compile.failed (see log)\n")
    assert "compile.failed" in capture.errids
    other = OutputCapture(error_id="compile.failed")
    other.feed(b"compile.failed-twice\nprecompile.failed\n")
    other.close()
    assert "compile.failed" not in other.errids


def test_flood_keeps_only_the_tail_but_remembers_early_ids() -> None:
    capture = OutputCapture(tail_bytes=1000)
    capture.feed(b"ERRID: EARLY\n")
    for _ in range(100):
        capture.feed(b"x" * 999 + b"\n")
    capture.close()
    assert "EARLY" in capture.errids
    assert len(capture.tail()) == 1000
    assert capture.truncated


def test_custom_regex_without_group() -> None:
    capture = OutputCapture(errid_regex=r"E\d{3}")
    capture.feed(b"failed with E042 and E043\n")
    capture.close()
    assert capture.errids == {"E042", "E043"}


def test_very_long_line_is_scanned_in_pieces() -> None:
    capture = OutputCapture(tail_bytes=100)
    capture.feed(b"ERRID: LONG " + b"y" * 200_000)
    assert "LONG" in capture.errids

"""What the server's kernel client makes of iopub output messages (server/kernels/client.py).

The client builds notebook outputs by hand instead of through nbformat (whose schema check
cost 0.2 ms an output); here each content a tenant's kernel could send, well-formed or
not, is held against nbformat's own validator: the client keeps exactly what the notebook
schema accepts, so every kept output exports into a valid notebook.
"""

from __future__ import annotations

from typing import Any

import nbformat
import pytest
from nbformat.v4 import output_from_msg
from nbformat.v4.nbbase import validate

from server.kernels.client import Message, _append_output, _output

CONTENTS: list[tuple[str, dict[str, Any]]] = [
    ("stream", {"name": "stdout", "text": "hi\n"}),
    ("stream", {"name": "stderr", "text": ""}),
    ("stream", {"name": "stdout", "text": ["a", "b"]}),  # valid, but the client wants text
    ("stream", {"name": 1, "text": "x"}),
    ("stream", {"name": "stdout"}),
    ("stream", {"text": "x"}),
    ("display_data", {"data": {"text/plain": "x"}, "metadata": {}}),
    ("display_data", {"data": {"text/plain": ["x", "y"]}, "metadata": {"a": 1}}),
    ("display_data", {"data": {"application/json": {"a": [1, 2]}}, "metadata": {}}),
    ("display_data", {"data": {"application/vnd.x+json": 3}, "metadata": {}}),
    ("display_data", {"data": {"text/plain": 3}, "metadata": {}}),
    ("display_data", {"data": {"text/plain": [1]}, "metadata": {}}),
    ("display_data", {"data": "x", "metadata": {}}),
    ("display_data", {"data": {}, "metadata": []}),
    ("display_data", {"data": {}}),
    ("execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 1}),
    ("execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": None}),
    ("execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": -1}),
    ("execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": "1"}),
    ("execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": True}),
    ("execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 1.5}),
    ("error", {"ename": "E", "evalue": "v", "traceback": ["t1", "t2"]}),
    ("error", {"ename": "E", "evalue": "v", "traceback": "t"}),
    ("error", {"ename": "E", "evalue": 1, "traceback": []}),
    ("error", {"ename": None, "evalue": "v", "traceback": []}),
    ("error", {"ename": "E", "evalue": "v", "traceback": [1]}),
]


def _schema_accepts(kind: str, content: dict[str, Any]) -> bool:
    try:
        output_from_msg({"header": {"msg_type": kind}, "content": content})  # checks the schema
    except (KeyError, TypeError, ValueError, nbformat.ValidationError):
        return False
    return not (kind == "stream" and not isinstance(content.get("text"), str))


@pytest.mark.parametrize(("kind", "content"), CONTENTS)
def test_an_output_is_kept_exactly_when_the_notebook_schema_accepts_it(
    kind: str, content: dict[str, Any]
) -> None:
    output = _output(Message(kind, content))
    assert (output is not None) == _schema_accepts(kind, content)
    if output is not None:
        validate(output, ref=kind)
        assert output["output_type"] == kind


def test_error_tracebacks_lose_their_colours() -> None:
    output = _output(
        Message("error", {"ename": "E", "evalue": "v", "traceback": ["\x1b[31mx\x1b[0m"]})
    )
    assert output is not None and output["traceback"] == ["x"]


def test_consecutive_chunks_of_one_stream_merge_and_each_comes_back_as_it_came() -> None:
    outputs: list[dict[str, Any]] = []
    chunks = [("stdout", "a"), ("stdout", "b"), ("stderr", "c"), ("stdout", "d")]
    returned = []
    for name, text in chunks:
        chunk = _append_output(outputs, Message("stream", {"name": name, "text": text}))
        assert chunk is not None
        returned.append(chunk["text"])  # read at once, as the streaming caller copies it
    assert returned == ["a", "b", "c", "d"]
    assert [(o["name"], o["text"]) for o in outputs] == [
        ("stdout", "ab"),
        ("stderr", "c"),
        ("stdout", "d"),
    ]
    assert (
        _append_output(outputs, Message("update_display_data", {"data": {}, "metadata": {}}))
        is None
    )

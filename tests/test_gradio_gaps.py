"""What gradio itself (6.31) does with the calls the Space's gate refuses and with the files its upload folder
bounds: a bare gradio app, no gate, no code of ours, one image endpoint as the Space's. Each test pins one shortfall
that space/gate.py (ApiGate) or space/uploads.py (UploadFolder) exists for; the day one fails, gradio does that job
itself and our piece for it can go (issue 16, item 1). The last two pin why space/app.py's one event per feature
(one_event) tells the page from an API caller, and the gradio behaviour it does that by (issue 16, item 2).
"""

from __future__ import annotations

import inspect
import json

import httpx
import numpy as np
import pytest
from conftest import free_port
from PIL import Image

gr = pytest.importorskip("gradio")
FILE_META = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """(url, the sizes of the images the handler received, a PNG on the server outside gradio's cache)."""
    folder = tmp_path_factory.mktemp("server-files")
    secret, example = folder / "secret.png", folder / "example.png"
    Image.fromarray(np.full((7, 5, 3), 200, np.uint8)).save(secret)  # never handed to gradio
    Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(example)
    received: list[tuple[int, int]] = []

    def classify(image, top_k):
        with Image.open(image) as opened:
            received.append(opened.size)
        return {"cat": 1.0}

    with gr.Blocks() as demo:
        image = gr.Image(type="filepath")
        top_k = gr.Slider(1, 10, 3, step=1)
        label = gr.Label()
        gr.Examples([[str(example)]], inputs=image)
        top_k.change(classify, [image, top_k], label, api_name="classify")
    port = free_port()
    demo.queue().launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/gradio_api/", received, str(secret)
    finally:
        demo.close()


def call(url: str, name: str, body) -> tuple[int, str]:
    response = httpx.post(f"{url}call/{name}", json=body, timeout=60)
    if response.status_code != 200:
        return response.status_code, response.text
    event = response.json()["event_id"]
    return 200, httpx.get(f"{url}call/{name}/{event}", timeout=60).text


def page_call(url: str, fn_index: int, data: list, session: str, **extra) -> dict:
    """Call an event by fn_index over /queue/join, as the page does (`trigger_id=`: the component that triggered
    it): its process_completed message."""
    joined = httpx.post(f"{url}queue/join", timeout=60,
                        json={"data": data, "fn_index": fn_index, "session_hash": session, **extra})
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", f"{url}queue/data", params={"session_hash": session}, timeout=60) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                return message
    raise AssertionError(f"no process_completed for fn_index {fn_index}")


def test_a_file_payload_without_gradios_marker_skips_its_upload_check_and_a_server_file_is_read(bare):
    url, received, secret = bare
    before = len(received)
    status, text = call(url, "classify", {"data": [{"path": secret}, 3]})
    assert status == 200 and "event: complete" in text, text
    assert received[before:] == [(5, 7)], "the handler opened the server's own file: gradio let it through"


def test_a_refused_file_is_answered_without_a_word_of_what_to_send(bare):
    url, received, secret = bare
    before = len(received)
    status, text = call(url, "classify", {"data": [{"path": secret, "meta": FILE_META}, 3]})
    assert (status, text.strip()) == (200, 'event: error\ndata: {"error": null}'), text
    assert len(received) == before


@pytest.mark.parametrize("data", [[5, 3], [[1, 2], 3], [None]])
def test_malformed_arguments_are_answered_error_null(bare, data):
    url, _, _ = bare
    status, text = call(url, "classify", {"data": data})
    assert (status, text.strip()) == (200, 'event: error\ndata: {"error": null}'), text


def test_an_unknown_endpoint_is_a_server_error(bare):
    url, _, _ = bare
    status, _ = call(url, "nope", {"data": [None, 3]})
    assert status == 500


def test_the_example_gallery_answers_a_bad_index_without_a_word_and_takes_minus_one_as_the_last(bare):
    """The page-only example event (fn_index over /queue/join): index 10, a string or null fail with no message
    (the gate says "send the number of one of the 10 choices"); -1 is taken, as Python indexing would."""
    url, _, _ = bare
    config = httpx.get(url.removesuffix("gradio_api/") + "config", timeout=60).json()
    index = next(i for i, d in enumerate(config["dependencies"])
                 if any(c["id"] in d["inputs"] and c["type"] == "dataset" for c in config["components"]))
    answers = {}
    for value in (10, "3", None, -1, 0):
        message = page_call(url, index, [value], f"s{value}")
        answers[value] = (message.get("success"), (message.get("output") or {}).get("error"))
    assert answers == {10: (False, None), "3": (False, None), None: (False, None), -1: (True, None),
                       0: (True, None)}, answers


def test_gradios_cache_cleaning_has_no_byte_budget_and_keeps_what_a_crashed_process_left(tmp_path, monkeypatch):
    """UploadFolder's two jobs: `delete_cache` is (frequency, age) only, and it deletes the files this Blocks
    instance tracks, so a file in the cache that no living process tracks (a crash's) stays for good."""
    from gradio import route_utils

    assert inspect.signature(gr.Blocks).parameters["delete_cache"].annotation == "tuple[int, int] | None", \
        "delete_cache took a new option: does it bound the bytes now?"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    left = tmp_path / "0123abcd" / "left-by-a-crash.png"
    left.parent.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(left)
    with gr.Blocks(delete_cache=(1, 1)) as demo:
        gr.Image(type="filepath")
    route_utils.delete_files_created_by_app(demo, None)  # what each scheduled clean (and shutdown) runs; None: all
    assert left.is_file()


@pytest.fixture(scope="module")
def one_event():
    """A bare app with one event that is both the page's and the API's, answering as the Space's page does: a
    setting out of range is one warning and every output skipped; a bad image is one warning and cleared."""
    with gr.Blocks() as demo:
        image = gr.Textbox("an image")
        top_k = gr.Slider(1, 10, 3, step=1)
        label = gr.Label()

        def classify(image, top_k):
            if top_k > 10:
                gr.Warning(f"top_k must be a whole number from 1 to 10, got {top_k}")
                return gr.skip(), gr.skip()
            if image == "unreadable":
                gr.Warning("cannot read the image")
                return None, None
            if image == "refused":  # the API's way
                raise gr.Error("cannot read the image", print_exception=False)
            return {"cat": 1.0}, gr.skip()

        # preprocess=False, as the Space's events: the handler sees what was sent (gradio's own slider check
        # would refuse 11 first, in words of its own).
        gr.on([top_k.change], classify, [image, top_k], [label, image], api_name="classify", preprocess=False)
    port = free_port()
    demo.queue().launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_what_the_page_says_of_a_refused_request_is_a_success_for_an_api_caller(one_event):
    """Why the Space's one event per feature answers the page and an API caller differently (space/app.py,
    one_event): the page refuses with a warning and keeps or clears its outputs, which a gradio_client caller
    receives as an answer, with no error to catch; the API must raise instead, and a raised event hands back no
    output at all, so the page could not clear a refused image with it. The day gradio_client raises on a warning,
    the event can answer both alike."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(one_event, verbose=False, httpx_kwargs={"timeout": 120})
    assert client.predict("an image", 3, api_name="/classify")[0]["label"] == "cat"
    # Neither of the page's refusals raises: the caller gets an answer and no word of the warning.
    assert client.predict("an image", 11, api_name="/classify") == ({"__type__": "update"},) * 2, "skipped"
    assert client.predict("unreadable", 3, api_name="/classify") == ({}, None), "cleared: an empty label"
    with pytest.raises(AppError, match="cannot read the image"):
        client.predict("refused", 3, api_name="/classify")
    # What the page receives for a raised event (its /queue/join): the message, and no output to set.
    done = page_call(f"{one_event}gradio_api/", 0, ["refused", 3], "page")
    assert done["success"] is False and done["output"]["error"] == "cannot read the image", done
    assert "data" not in done["output"], "a raised event sets none of its outputs"


@pytest.fixture(scope="module")
def page_or_api():
    """A bare app with one event that the page triggers and API callers call by name, as the Space wires each
    feature: a State input and a State output of the page's, a next step of the page's; it records what it saw."""
    seen: list[tuple] = []
    with gr.Blocks() as demo:
        text = gr.Textbox("x")
        shown, refused = gr.State(True), gr.State(False)
        out = gr.Textbox()

        def answer(text, shown, event: gr.EventData):
            seen.append(("event", text, shown, type(event.target).__name__ if event.target is not None else None))
            return f"{text}:{shown}", True

        def next_step(refused):
            seen.append(("next", refused))
            return gr.skip()

        gr.on([text.change, demo.load], answer, [text, shown], [out, refused], api_name="answer").then(
            next_step, refused, text, api_visibility="private")
    port = free_port()
    demo.queue().launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        event = next(d for d in demo.get_config_file()["dependencies"] if d["api_name"] == "answer")
        yield f"http://127.0.0.1:{port}/", event, text._id, seen
    finally:
        demo.close()


def test_a_call_names_the_component_that_triggered_it_only_when_the_page_makes_it(page_or_api):
    """What space/app.py's from_page reads: gradio hands a handler the component that triggered its event when
    the page calls (its /queue/join names a trigger_id), and none for an API caller (gradio_client, /call, or
    /queue/join without a trigger) or the page's load; a State input stays out of the API (the caller's session
    value is used), a State output out of gradio_client's answers but not out of /call's (one more null: why the
    Space clears a refused image in a step of its own, not through a State); a next step (.then) runs only when
    the page asks for it, never for an API caller. The day one of these changes, one_event must change with it."""
    from gradio_client import Client

    url, event, text_id, seen = page_or_api
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/answer"]
    assert [p["parameter_name"] for p in info["parameters"]] == ["text"] and len(info["returns"]) == 1
    seen.clear()
    assert client.predict("api", api_name="/answer") == "api:True", "the State's own value, and no State answered"
    status, text = call(f"{url}gradio_api/", "answer", {"data": ["rest"]})
    assert status == 200 and '["rest:True", null]' in text, text
    page_call(f"{url}gradio_api/", event["id"], ["joined", None], "s1")
    page_call(f"{url}gradio_api/", event["id"], ["page", None], "s2", trigger_id=text_id)
    page_call(f"{url}gradio_api/", event["id"], ["load", None], "s3", trigger_id=event["targets"][-1][0])
    assert seen == [("event", "api", True, None), ("event", "rest", True, None), ("event", "joined", True, None),
                    ("event", "page", True, "Textbox"), ("event", "load", True, None)], \
        "only the page's component trigger is named; no next step ran for any of them (the page's client runs it)"

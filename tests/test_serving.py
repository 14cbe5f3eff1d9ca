"""`nikl-emotion serve`: answers as the run predicts, concurrent requests micro-batched, every bad request a 4xx
naming its field (the service still healthy after), a clean stop on SIGTERM."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import ROOT, run_cli
from fastapi.testclient import TestClient

from nikl_emotion.base.labels import LABELS
from nikl_emotion.runs.prediction import checkpoint_loader
from nikl_emotion.runs.run_classifier import EmotionClassifier
from nikl_emotion.serving.app import ServeOptions, create_app
from nikl_emotion.serving.micro_batching import RETURN_SHARE, MicroBatcher
from nikl_emotion.serving.requests import Limits
from nikl_emotion.serving.served_model import ServedModel

TEXT, TARGET = "오늘 &name1& 공연 너무 좋았다", "공연"


@pytest.fixture(scope="module")
def served(tiny_run):
    return ServedModel(str(tiny_run), checkpoint_loader("cpu"))


@pytest.fixture()
def client(served):
    options = ServeOptions(max_batch_size=16, max_wait_ms=50, limits=Limits(20_000, 8, 300))
    with TestClient(create_app(served, options)) as client:
        yield client


def test_answers_are_the_runs_own_predictions(client, tiny_run):
    begin = TEXT.index(TARGET)
    task_row = {"id": "r", "input": {"form": TEXT, "target": {"form": TARGET, "begin": begin, "end": begin + 2}}}
    expected = EmotionClassifier.from_pretrained(tiny_run, device="cpu")
    for body in (
        {"text": TEXT, "target": TARGET},
        {"text": TEXT, "target": {"begin": begin, "end": begin + 2}},
        task_row,
    ):
        answer = client.post("/predict", json=body).json()
        (row,) = answer["rows"]
        probs = [row["probabilities"][label] for label in LABELS]
        np.testing.assert_allclose(probs, expected.predict_proba(task_row)[0], atol=2e-6)
        assert row["labels"] == [label for label, flag in zip(LABELS, expected.predict(task_row)[0]) if flag]
        assert row["output"] == {label: "True" if label in row["labels"] else "False" for label in LABELS}
        assert answer["decision"] == json.loads((tiny_run / "decision.json").read_text())
    many = client.post("/predict", json={"rows": [task_row, {"text": "싫다", "id": "b"}]}).json()["rows"]
    assert [row["id"] for row in many] == ["r", "b"]
    assert client.get("/labels").json()["labels"] == list(LABELS)
    assert client.get("/health").json()["served"]["rows"] == 5


def test_concurrent_requests_share_batches(client):
    texts = [f"{TEXT} {i}" for i in range(12)]
    alone = [client.post("/predict", json={"text": t}).json()["rows"][0] for t in texts[:3]]
    before = client.get("/health").json()["served"]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda t: client.post("/predict", json={"text": t}).json()["rows"][0], texts))
    after = client.get("/health").json()["served"]
    assert after["rows"] - before["rows"] == 12 and after["batches"] - before["batches"] < 12
    for one, together in zip(alone, answers):  # batched with others, each row's answer is its own
        np.testing.assert_allclose(
            list(one["probabilities"].values()), list(together["probabilities"].values()), atol=2e-6
        )


REFUSALS = [
    (b"{bad json", 400, "body"),
    (b"\xff\xfe", 400, "body"),
    (b"[" * 15_000, 400, "body"),  # nested deeper than the parser recurses
    (b"5", 422, "body"),
    (b"[]", 422, "rows"),
    (b'{"rows": 3}', 422, "rows"),
    (b'["text"]', 422, "rows[0]"),
    (b'{"text": 5}', 422, "rows[0].text"),
    (b'{"txt": "a"}', 422, "rows[0]"),
    (b'{"text": "a", "id": 7}', 422, "rows[0].id"),
    (b'{"text": "abc", "target": "z"}', 422, "rows[0].target"),
    (b'{"text": "abc", "target": {"begin": 2, "end": 9}}', 422, "rows[0].target"),
    (b'{"text": "abc", "target": {"begin": "0", "end": 1}}', 422, "rows[0].target.begin"),
    (b'{"text": "abc", "target": 1.5}', 422, "rows[0].target"),
    (b'{"text": "' + b"x" * 301 + b'"}', 422, "rows[0].text"),
    (b'{"text": "\\ud800 a"}', 422, "rows[0].input"),
    (b'{"text": "   "}', 422, "rows[0].input.form"),
    (b'{"input": {"form": "abc", "target": {"form": "b", "begin": 0, "end": 1}}}', 422, "rows[0].input.target"),
    (b'{"input": "abc"}', 422, "rows[0].input"),
    (json.dumps({"rows": [{"text": "a"}] * 9}).encode(), 413, "rows"),
    (b'{"text": "' + b"x" * 30_000 + b'"}', 413, "body"),
]


@pytest.mark.parametrize(
    ("body", "status", "field"), REFUSALS, ids=[f"{i}-{r[1]}-{r[2]}" for i, r in enumerate(REFUSALS)]
)
def test_bad_requests_get_a_4xx_naming_the_field(client, body, status, field):
    answer = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == field
    assert client.get("/health").json()["status"] == "ok"


def test_the_routers_own_refusals_have_the_documented_error_shape(client):
    wrong_method = client.get("/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"error": {"field": None, "message": "Method Not Allowed"}}
    unknown = client.get("/nowhere")
    assert unknown.status_code == 404 and unknown.json() == {"error": {"field": None, "message": "Not Found"}}


def test_a_body_streamed_past_the_limit_is_refused(client):
    def chunks():
        for _ in range(30):
            yield b" " * 1000  # no Content-Length: counted as it arrives

    answer = client.post("/predict", content=chunks())
    assert answer.status_code == 413 and answer.json()["error"]["field"] == "body"


def test_micro_batcher_batches_within_its_window_and_survives_a_failed_batch():
    calls = []

    def predict(records):
        calls.append(len(records))
        if any(r["input"]["form"] == "boom" for r in records):
            raise ValueError("boom")
        n = len(records)
        return np.zeros((n, 8), bool), np.full((n, 8), float(n))

    async def scenario():
        batcher = MicroBatcher(predict, max_batch_size=4, max_wait_ms=200)
        batcher.start()
        one = [{"id": "x", "input": {"form": "a", "target": None}}]
        answers = await asyncio.gather(*[batcher.predict(one) for _ in range(6)])
        assert calls == [4, 2] and [a[1].shape[0] for a in answers] == [1] * 6
        with pytest.raises(ValueError, match="boom"):
            await batcher.predict([{"id": "x", "input": {"form": "boom", "target": None}}])
        await batcher.predict(one * 5)  # larger than a batch: answered alone
        assert calls[-1] == 5 and batcher.batches == 3
        await batcher.close()

    asyncio.run(scenario())


ONE_ROW = [{"id": "x", "input": {"form": "a", "target": None}}]


def slow_model(seconds: float) -> tuple[list[int], object]:
    """A model that takes `seconds` a batch, and the list of its batches' sizes."""
    calls: list[int] = []

    def predict(records):
        calls.append(len(records))
        time.sleep(seconds)
        return np.zeros((len(records), 8), bool), np.zeros((len(records), 8))

    return calls, predict


def serve_with(predict, clients) -> float:
    """Run `clients(batcher)` against a batcher of `predict`; the seconds its batches waited for returning clients."""

    async def scenario():
        batcher = MicroBatcher(predict, max_batch_size=64, max_wait_ms=0)
        batcher.start()
        await clients(batcher)
        await batcher.close()
        return batcher.waited_for_returns

    return asyncio.run(scenario())


def test_clients_that_ask_again_when_answered_make_whole_batches_not_alternating_halves():
    """32 clients, each sending its next one-row request as soon as it has its answer, and a model that takes a
    while: without waiting for the answered clients, the requests that arrived during a batch form the next one
    while the others are on their way back, and the batches settle at about half the clients each."""
    calls, predict = slow_model(0.01)

    async def client(batcher, index):
        for _ in range(10):
            await batcher.predict(ONE_ROW)
            # the answer's way back and the next request's way in, some clients slower than others (0.2-1.8 ms)
            await asyncio.sleep(0.0002 + 0.00005 * index)

    serve_with(predict, lambda batcher: asyncio.gather(*[client(batcher, index) for index in range(32)]))
    assert sum(calls) == 320
    # before: [1, 31, 1, 31, ...] or halves of ~16 (a mean of 16); whole batches are 24-32 on a loaded CI host
    assert sum(calls[1:-1]) / len(calls[1:-1]) > 21, calls


def test_a_lone_client_is_not_kept_waiting_for_others():
    """A client alone is back as soon as it has its answer: its batch never waits for anyone else."""
    calls, predict = slow_model(0.01)

    async def one_client(batcher):
        for _ in range(20):
            await batcher.predict(ONE_ROW)

    assert serve_with(predict, one_client) == 0.0 and calls == [1] * 20


def test_clients_that_do_not_come_back_delay_a_batch_by_a_share_of_the_last_one_at_most():
    calls, predict = slow_model(0.04)

    async def callers(batcher):
        await asyncio.gather(*[batcher.predict(ONE_ROW) for _ in range(4)])  # 4 callers that never return
        await batcher.predict(ONE_ROW)  # a newcomer: its batch waits for the 4, then gives up

    waited = serve_with(predict, callers)
    assert calls == [1, 3, 1] or calls == [4, 1], calls
    assert 0 < waited <= RETURN_SHARE * 0.04 * 1.5 + 0.005


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_command_serves_then_stops_cleanly_on_sigterm(tiny_run):
    """SIGTERM stops the service within its grace however a client behaves: one trickling its body is cut off
    with a 408 once `--request_timeout_s` has passed (before, the service stayed up as long as the client did)."""
    port = _free_port()
    command = [sys.executable, "-m", "nikl_emotion", "serve", str(tiny_run), "--port", str(port)]
    command += ["--request_timeout_s", "2"]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, health = time.monotonic() + 120, None
        while health is None and time.monotonic() < deadline and server.poll() is None:
            try:
                health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2))
            except OSError:
                time.sleep(0.3)
        assert health and health["checkpoints"] == 2, server.stderr.read() if server.poll() is not None else ""
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert "text/html; charset=utf-8" in page.headers["content-type"] and "감정" in page.read().decode("utf-8")
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")  # 999 bytes owed
        time.sleep(0.5)
        stopped_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert time.monotonic() - stopped_at < 2 + 5 + 3  # the body's timeout, an answer's seconds, start-up noise
        assert slow.recv(4096).startswith(b"HTTP/1.1 408")
        slow.close()
        assert f"on http://127.0.0.1:{port}/" in server.stdout.read()
    finally:
        server.kill()


def test_the_command_refuses_a_folder_without_a_model_and_bad_options(tmp_path):
    result = run_cli("-m", "nikl_emotion", "serve", tmp_path, check=False)
    assert result.returncode == 1 and "error:" in result.stderr
    result = run_cli("-m", "nikl_emotion", "serve", tmp_path, "--max_batch_size", "0", check=False)
    assert result.returncode == 1 and "--max_batch_size: must be at least 1" in result.stderr
    for option, value, message in [
        ("--max_wait_ms", "inf", "--max_wait_ms: must be between 0 and 1000"),
        ("--max_wait_ms", "1e9", "--max_wait_ms: must be between 0 and 1000"),
        ("--max_wait_ms", "nan", "--max_wait_ms: must be between 0 and 1000"),
        ("--port", "70000", "--port: must be at most 65535"),
        ("--request_timeout_s", "0", "--request_timeout_s: must be above 0"),
        ("--request_timeout_s", "inf", "--request_timeout_s: must be above 0"),
    ]:
        result = run_cli("-m", "nikl_emotion", "serve", tmp_path, option, value, check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr


def test_a_checkpoint_and_its_onnx_export_are_served_as_they_predict(tiny_run, tmp_path):
    """`serve` takes a fold's best/ or an export as well as a run; each checkpoint is loaded once, whatever the
    number of requests."""
    best = tiny_run / "fold_0" / "best"
    run_cli("export.py", "--checkpoint", best, "--output", tmp_path / "onnx")
    row = {"text": TEXT, "target": TARGET}
    begin = TEXT.index(TARGET)
    task_row = {"id": "r", "input": {"form": TEXT, "target": {"form": TARGET, "begin": begin, "end": begin + 2}}}
    load = checkpoint_loader("cpu")
    for folder in (best, tmp_path / "onnx"):
        loads = []
        model = ServedModel(str(folder), lambda path, loads=loads: loads.append(path) or load(path))
        with TestClient(create_app(model)) as client:
            answers = [client.post("/predict", json=row).json()["rows"][0] for _ in range(3)]
        assert loads == [str(folder)]
        expected = EmotionClassifier.from_pretrained(folder, device="cpu").predict_proba(task_row)[0]
        for answer in answers:
            np.testing.assert_allclose([answer["probabilities"][label] for label in LABELS], expected, atol=2e-6)

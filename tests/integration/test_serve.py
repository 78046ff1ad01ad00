"""`attnkit serve`: the OpenAI routes driven by the real `openai` client against a server on a
free loopback port (MiniLM for embeddings, a tiny character GPT for completions), the bad
requests by raw HTTP, overload with a worker held still, and the command itself."""

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import attnkit  # noqa: E402
from attnkit.cli import main  # noqa: E402
from attnkit.generation import generate  # noqa: E402
from attnkit.models import build_model, get_preset  # noqa: E402
from attnkit.serve import Limits, load_services, start  # noqa: E402
from attnkit.serve.batching import BatchQueue, Job  # noqa: E402
from attnkit.serve.completions import StopCutter, chat_prompt  # noqa: E402
from attnkit.text.tokenizers import train_char  # noqa: E402

KEY = "test-key"
LINES = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them.",
    "Friends, Romans, countrymen, lend me your ears;",
    "Now is the winter of our discontent",
    "All the world's a stage,",
]
TEXT = "\n".join(LINES * 3) + "\nROMEO: what light?\nsystem: Speak verse.\nuser: assistant:\n"


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    tok = train_char(TEXT)
    torch.manual_seed(0)
    model = build_model(
        get_preset("tiny", vocab_size=tok.get_vocab_size(), max_seq_len=64).replace(
            initializer_range=0.3
        )
    )
    out = tmp_path_factory.mktemp("serve") / "chargpt"
    attnkit.save(model, out, tokenizer=tok)
    return out


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BERT encoder with a word-piece tokenizer of letters and a few words."""
    from tokenizers.implementations import BertWordPieceTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    words += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["the", "to", "be", "or", "not"]
    tok = BertWordPieceTokenizer({w: i for i, w in enumerate(words)}, lowercase=True)._tokenizer
    cfg = get_preset("tiny-bert", vocab_size=len(words), d_model=32, n_heads=4, pooling="mean")
    out = tmp_path_factory.mktemp("serve") / "tinybert"
    attnkit.save(build_model(cfg).eval(), out, tokenizer=tok)
    return out


@pytest.fixture(scope="module")
def server(gpt_dir):
    limits = Limits(max_body_bytes=64 << 10, max_inputs=16, max_tokens=32, queue_size=16)
    running = start(load_services(["minilm", str(gpt_dir)], limits), limits, api_key=KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def raw(server, method, path, body=None, headers=None, key=KEY):
    """(status, parsed JSON) of one plain HTTP request."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload)


def greedy_text(model_dir, prompt, n):
    model = attnkit.load(model_dir)
    tok = model.meta.tokenizer
    ids = tok.encode(prompt, add_special_tokens=False).ids
    return tok.decode(generate(model, ids, n, temperature=0)[len(ids) :])


# --------------------------------------------------------------------------------------------
# the OpenAI client
# --------------------------------------------------------------------------------------------
def test_embeddings_equal_attnkit_embed(client, tmp_path, capsys):
    src = tmp_path / "lines.txt"
    src.write_text("\n".join(LINES) + "\n")
    assert (
        main(["embed", "--file", str(src), "--model", "minilm", "--out", str(tmp_path / "e.npy")])
        == 0
    )
    ref = np.load(tmp_path / "e.npy")
    got = client.embeddings.create(model="minilm", input=LINES, encoding_format="float")
    assert [d.index for d in got.data] == list(range(len(LINES)))
    vecs = np.array([d.embedding for d in got.data], dtype=np.float32)
    np.testing.assert_allclose(vecs, ref, atol=2e-6, rtol=0)
    assert got.model == "minilm" and got.usage.prompt_tokens > len(LINES)
    one = client.embeddings.create(model="minilm", input=LINES[3])  # float, the default
    np.testing.assert_allclose(np.array(one.data[0].embedding), ref[3], atol=2e-6, rtol=0)
    packed = client.embeddings.create(model="minilm", input=LINES[:2], encoding_format="base64")
    vecs = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in packed.data])
    np.testing.assert_allclose(vecs, ref[:2], atol=2e-6, rtol=0)


def test_concurrent_embedding_requests_each_get_their_own_rows(client, server):
    ref = client.embeddings.create(model="minilm", input=LINES, encoding_format="float")
    ref_vecs = np.array([d.embedding for d in ref.data])
    results, errors = {}, []

    def ask(i):
        try:
            chunk = LINES[i % 8 : i % 8 + 1 + i % 3]
            r = client.embeddings.create(model="minilm", input=chunk, encoding_format="float")
            results[i] = (i % 8, np.array([d.embedding for d in r.data]))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 12
    for start_, vecs in results.values():
        np.testing.assert_allclose(vecs, ref_vecs[start_ : start_ + len(vecs)], atol=2e-6, rtol=0)


def test_completions_equal_greedy_generate(client, gpt_dir):
    want = greedy_text(gpt_dir, "ROMEO:", 12)
    got = client.completions.create(model="chargpt", prompt="ROMEO:", max_tokens=12, temperature=0)
    assert got.choices[0].text == want
    assert got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == 6 and got.usage.completion_tokens == 12
    batch = client.completions.create(
        model="chargpt", prompt=["ROMEO:", "To be"], max_tokens=5, temperature=0
    )
    assert [c.text for c in batch.choices] == [
        greedy_text(gpt_dir, "ROMEO:", 5),
        greedy_text(gpt_dir, "To be", 5),
    ]
    streamed = client.completions.create(
        model="chargpt", prompt="ROMEO:", max_tokens=12, temperature=0, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "length"


def test_concurrent_completions_share_batches_and_keep_their_rows(client, gpt_dir):
    prompts = ["ROMEO:", "To be", "Now is the", "All", "Friends, Romans", "Or to take arms"]
    want = {p: greedy_text(gpt_dir, p, 8) for p in prompts}
    got, errors = {}, []

    def ask(p):
        try:
            r = client.completions.create(model="chargpt", prompt=p, max_tokens=8, temperature=0)
            got[p] = r.choices[0].text
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and got == want


def test_the_event_stream_on_the_wire(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = {"model": "chargpt", "prompt": "To be", "max_tokens": 4, "temperature": 0}
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps({**body, "stream": True}),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    events = [e for e in resp.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and len(
        {c["id"] for c in chunks}
    ) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    _, plain = raw(server, "POST", "/v1/completions", body)
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]


def test_stop_strings_cut_the_text_before_them(client, gpt_dir):
    full = greedy_text(gpt_dir, "To be", 20)
    stop = full[6:8]  # a string the greedy text is known to contain
    cut = full[: full.index(stop)]
    got = client.completions.create(
        model="chargpt", prompt="To be", max_tokens=20, temperature=0, stop=[stop]
    )
    assert got.choices[0].text == cut and got.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="chargpt", prompt="To be", max_tokens=20, temperature=0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_completions_and_their_stream(client, gpt_dir):
    messages = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "To be"}]
    prompt = chat_prompt([type("M", (), m) for m in messages])
    assert prompt == "system: Speak verse.\nuser: To be\nassistant:"
    want = greedy_text(gpt_dir, prompt, 10)
    for stop in ("\nuser:", "\nsystem:"):
        want = want.split(stop)[0]
    got = client.chat.completions.create(
        model="chargpt", messages=messages, max_tokens=10, temperature=0
    )
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want
    chunks = list(
        client.chat.completions.create(
            model="chargpt", messages=messages, max_tokens=10, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_seeded_sampling_is_reproducible(client):
    args = dict(model="chargpt", prompt="ROMEO:", max_tokens=10, temperature=1.0, seed=7)
    assert client.completions.create(**args).choices[0].text == (
        client.completions.create(**args).choices[0].text
    )


def test_models_and_health(client, server):
    assert sorted(m.id for m in client.models.list()) == ["chargpt", "minilm"]
    assert client.models.retrieve("minilm").id == "minilm"
    status, body = raw(server, "GET", "/health", key=None)
    assert status == 200 and body["status"] == "ok"
    assert body["models"]["minilm"]["kind"] == "embeddings"
    assert body["models"]["chargpt"]["kind"] == "completions"


def test_the_client_sees_api_errors(server, client):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model="minilm", input="x")
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        client.embeddings.create(model="gpt-4", input="x")
    with pytest.raises(openai.BadRequestError, match="exceeds this server's limit of 32"):
        client.completions.create(model="chargpt", prompt="x", max_tokens=33)


# --------------------------------------------------------------------------------------------
# bad requests, by raw HTTP
# --------------------------------------------------------------------------------------------
BAD = [
    # (body, status, param or None, words in the message)
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 422, None, "JSON object"),
    ({"input": "x"}, 422, "model", "model"),
    ({"model": "minilm"}, 422, "input", "input"),
    ({"model": "minilm", "input": 5}, 422, "input", "input"),
    ({"model": "minilm", "input": [["a"]]}, 422, "input", "input"),
    ({"model": "minilm", "input": []}, 400, "input", "empty list"),
    ({"model": "minilm", "input": [""]}, 400, "input", "input[0] is empty"),
    ({"model": "minilm", "input": [1, 2, 3]}, 400, "input", "token ids"),
    ({"model": "minilm", "input": ["a"] * 17}, 400, "input", "17 texts; the limit is 16"),
    ({"model": "minilm", "input": "word " * 400}, 400, "input", "more than 256 tokens"),
    ({"model": "minilm", "input": "x", "dimensions": 8}, 400, "dimensions", "384"),
    ({"model": "minilm", "input": "x", "encoding_format": "hex"}, 422, "encoding_format", ""),
    ({"model": "unknown", "input": "x"}, 404, "model", "does not exist"),
    ({"model": "chargpt", "input": "x"}, 400, "model", "serves /v1/completions"),
]


@pytest.mark.parametrize("body,status,param,words", BAD)
def test_bad_embedding_requests(server, body, status, param, words):
    got, err = raw(server, "POST", "/v1/embeddings", body)
    assert got == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["param"] == param and words in err["error"]["message"], err


BAD_COMPLETIONS = [
    ({"model": "chargpt", "prompt": "x", "max_tokens": 0}, 422, "max_tokens"),
    ({"model": "chargpt", "prompt": "x", "max_tokens": "many"}, 422, "max_tokens"),
    ({"model": "chargpt", "prompt": "x", "temperature": -1}, 422, "temperature"),
    ({"model": "chargpt", "prompt": "x", "n": 2}, 400, "n"),
    ({"model": "chargpt", "prompt": "a" * 60, "max_tokens": 10}, 400, "max_tokens"),
    ({"model": "chargpt", "prompt": "a" * 65}, 400, "prompt"),
    ({"model": "chargpt", "prompt": "\u00e9t\u00e9"}, 400, "prompt"),  # not in its vocabulary
    ({"model": "chargpt", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "chargpt", "prompt": []}, 400, "prompt"),
    ({"model": "minilm", "prompt": "x"}, 400, "model"),
]


@pytest.mark.parametrize("body,status,param", BAD_COMPLETIONS)
def test_bad_completion_requests(server, body, status, param):
    got, err = raw(server, "POST", "/v1/completions", body)
    assert got == status and err["error"]["param"] == param, err


def test_key_size_and_route_errors(server):
    body = {"model": "minilm", "input": "x"}
    assert raw(server, "POST", "/v1/embeddings", body, key=None)[0] == 401
    status, err = raw(server, "POST", "/v1/embeddings", body, key="wrong")
    assert status == 401 and err["error"]["code"] == "invalid_api_key"
    assert raw(server, "GET", "/v1/models", key=None)[0] == 401
    huge = json.dumps({"model": "minilm", "input": ["a" * 1000] * 70}).encode()  # > 64 KiB
    status, err = raw(server, "POST", "/v1/embeddings", huge)
    assert status == 413 and "65536 bytes" in err["error"]["message"]
    status, err = raw(server, "GET", "/v1/nothing")
    assert status == 404 and err["error"]["code"] == "not_found"
    chat = {"model": "chargpt", "messages": [{"role": "robot", "content": "x"}]}
    status, err = raw(server, "POST", "/v1/chat/completions", chat)
    assert status == 422 and err["error"]["param"] == "messages.0.role"
    assert raw(server, "GET", "/health", key=None)[0] == 200  # still serving


def test_a_chunked_body_over_the_limit_is_refused(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = (b"x" * 8192 for _ in range(9))  # 72 KiB, no Content-Length: sent chunked
    conn.request(
        "POST",
        "/v1/embeddings",
        body=chunks,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "body_too_large"
    conn.close()


def test_a_client_that_leaves_mid_stream_does_not_disturb_the_server(server, client, gpt_dir):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = {"model": "chargpt", "prompt": "ROMEO:", "max_tokens": 32, "stream": True}
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    assert resp.readline().startswith(b"data: {")
    conn.close()  # gone after the first event
    got = client.completions.create(model="chargpt", prompt="To be", max_tokens=6, temperature=0)
    assert got.choices[0].text == greedy_text(gpt_dir, "To be", 6)


# --------------------------------------------------------------------------------------------
# batching and overload
# --------------------------------------------------------------------------------------------
def test_the_worker_batches_what_waits_and_keys_apart():
    entered, release = threading.Event(), threading.Event()
    batches = []

    def run(jobs):
        if not batches:
            entered.set()
            release.wait(30)
        batches.append([j.payload for j in jobs])
        for j in jobs:
            j.finish(j.payload)

    q = BatchQueue(run, Limits(queue_size=8, batch_wait_ms=0), max_batch=4)
    try:
        first = q.submit(Job("a0", key="a"))
        assert entered.wait(30)
        later = [q.submit(Job(p, key=p[0])) for p in ("a1", "b1", "a2", "a3", "a4", "a5")]
        with pytest.raises(Exception) as e:  # a0 runs; 6 + c0 + c1 fill the 8 places
            for i in range(3):
                later.append(q.submit(Job(f"c{i}", key="c")))
        assert getattr(e.value, "status", None) == 429
        release.set()
        for job in [first, *later]:
            job.future.result(30)
    finally:
        q.close()
    assert batches[0] == ["a0"]
    assert batches[1] == ["a1", "a2", "a3", "a4"]  # same key, up to max_batch, in order
    assert ["b1"] in batches and ["a5"] in batches
    assert sorted(p for b in batches for p in b) == sorted(
        ["a0", "a1", "b1", "a2", "a3", "a4", "a5", "c0", "c1"]
    )


def test_overload_is_answered_429_then_503_and_the_server_recovers(bert_dir):
    limits = Limits(queue_size=1, batch_wait_ms=0, request_timeout_s=0.5)
    services = load_services([str(bert_dir)], limits)
    svc = services["tinybert"]
    entered, release = threading.Event(), threading.Event()
    real = svc.encoder.encode_ids

    def held(*args, **kw):
        if not entered.is_set():
            entered.set()
            release.wait(30)
        return real(*args, **kw)

    svc.encoder.encode_ids = held
    running = start(services, limits)
    try:
        c = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0, timeout=60)
        out = {}
        first = threading.Thread(
            target=lambda: out.setdefault("first", c.embeddings.create(model="tinybert", input="a"))
        )
        first.start()
        assert entered.wait(30)

        def second():
            try:
                c.embeddings.create(model="tinybert", input="b")
            except openai.APIStatusError as e:
                out["second"] = e.status_code

        waiting = threading.Thread(target=second)
        waiting.start()
        until = time.monotonic() + 30
        while svc.queue.depth() < 1 and time.monotonic() < until:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError, match="busy"):
            c.embeddings.create(model="tinybert", input="c")
        time.sleep(0.7)  # the waiting request is now older than request_timeout_s
        release.set()
        first.join(60)
        waiting.join(60)
        assert len(out["first"].data) == 1
        assert out["second"] == 503
        assert len(c.embeddings.create(model="tinybert", input=["d", "e"]).data) == 2
    finally:
        running.stop()


def test_stop_cutter_holds_back_what_could_begin_a_stop():
    cut = StopCutter(("\nuser:",))
    assert [cut.push(p) for p in ("hello", "\nus", "e", "r: x")] == ["hello", "", "", ""]
    assert cut.flush() == "" and cut.text == "hello" and cut.stopped
    late = StopCutter(("ab",))
    assert [late.push(p) for p in ("xa", "c", "a")] == ["x", "ac", ""]
    assert late.flush() == "a" and late.text == "xaca"
    plain = StopCutter(())
    assert plain.push("ab") == "ab" and plain.flush() == ""


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def test_the_command_serves_until_interrupted(gpt_dir):
    env = {**os.environ, "ATTNKIT_API_KEY": "from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnkit", "serve", "--model", str(gpt_dir), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = [proc.stderr.readline()]
        while not lines[-1].startswith("attnkit serve: ") and lines[-1] and len(lines) < 50:
            lines.append(proc.stderr.readline())  # a library warning may come first
        line = lines[-1]
        assert line.startswith("attnkit serve: http://127.0.0.1:"), lines
        url = line.split()[2].removesuffix("/v1")
        c = openai.OpenAI(base_url=url + "/v1", api_key="from-env", max_retries=0, timeout=60)
        got = c.completions.create(model="chargpt", prompt="To be", max_tokens=4, temperature=0)
        assert got.choices[0].text == greedy_text(gpt_dir, "To be", 4)
        proc.send_signal(signal.SIGINT)  # uvicorn drains, then the Ctrl-C exit status
        assert proc.wait(30) == 130
        assert "attnkit: interrupted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_command_refuses_a_busy_port(gpt_dir, capsys):
    from attnkit.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        with pytest.raises(SystemExit) as e:
            main(["serve", "--model", str(gpt_dir), "--port", str(sock.getsockname()[1])])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot listen on 127.0.0.1:" in err[0]
    finally:
        sock.close()


def test_without_fastapi_the_command_names_the_extra(gpt_dir, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "attnkit.serve" or m.startswith("attnkit.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now fails
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", str(gpt_dir), "--port", "0"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attnkit: error: fastapi is not installed: pip install 'attnkit[serve]'"]

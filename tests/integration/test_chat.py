"""`attnkit chat` and :class:`attnkit.generation.chat.ChatSession`: the KV cache kept between
turns (tokens fed to the model counted by a hook; logits equal to a cold full forward pass;
replies equal to uncached generation), the context sliding, /reset, and the command driven
through a pseudo-terminal on a tiny trained model."""

import os
import select
import subprocess
import sys
import time

import pytest
import torch

import attnkit
from attnkit.generation.chat import ChatSession
from attnkit.models import build_model, get_preset
from attnkit.text.tokenizers import train_char

LINE = "abcdefghij\n"
MAIN = "import sys; from attnkit.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A 2-layer GPT trained (60 steps, a few seconds) on lines of 'abcdefghij': greedy
    decoding continues the cycle, so a reply is known in advance."""
    torch.manual_seed(0)
    text = LINE * 50
    tok = train_char(text)
    V = tok.get_vocab_size()
    cfg = get_preset("tiny", vocab_size=V, n_layer=2, n_heads=2, d_model=32, max_seq_len=48)
    model = build_model(cfg)
    ids = torch.tensor(tok.encode(text).ids)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(60):
        starts = torch.randint(0, len(ids) - 33, (16,))
        x = torch.stack([ids[s : s + 32] for s in starts])  # (16, 32)
        y = torch.stack([ids[s + 1 : s + 33] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x).logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("chat") / "tiny"
    attnkit.save(model.eval(), out, tokenizer=tok)
    return out


@pytest.fixture()
def model(trained_dir):
    return attnkit.load(trained_dir)


def fed_counter(model):
    """The number of tokens each forward pass runs, in order (a hook on the embeddings)."""
    fed: list[int] = []
    model.embed.register_forward_pre_hook(lambda mod, a, kw={}: fed.append(a[0].shape[1]))
    return fed


def cold_reply(model, ids, n):
    """The greedy continuation of ``ids`` by full, uncached forward passes."""
    out = attnkit.generate(model, ids, max_new_tokens=n, temperature=0, use_cache=False)
    return out[len(ids) :]


def test_only_new_tokens_go_through_the_model(model):
    tok = model.meta.tokenizer
    fed = fed_counter(model)
    chat = ChatSession(model, max_new_tokens=6, temperature=0)
    first = [t.token_id for t in chat.send("abc\n").tokens]
    assert fed == [4] + [1] * 5  # the turn's 4 tokens, then one per step; the 6th is not fed
    assert first == cold_reply(model, tok.encode("abc\n").ids, 6)
    assert chat.cached == 4 + 5 and len(chat.tokens) == 4 + 6
    fed.clear()
    second = [t.token_id for t in chat.send("bcd\n").tokens]
    turn = tok.encode("bcd\n").ids
    assert fed == [1 + len(turn)] + [1] * 5  # the reply's last token + the new turn
    history = tok.encode("abc\n").ids + first + turn
    assert second == cold_reply(model, history, 6)
    assert chat.tokens == history + second


def test_cached_logits_equal_a_cold_forward_pass(model):
    tok = model.meta.tokenizer
    logits: list[torch.Tensor] = []
    model.lm_head.register_forward_hook(lambda mod, a, out: logits.append(out.detach().clone()))
    chat = ChatSession(model, max_new_tokens=5, temperature=0)
    first = [t.token_id for t in chat.send("cde\n").tokens]
    logits.clear()
    second = [t.token_id for t in chat.send("fg").tokens]
    cached = list(logits)  # before the cold pass below adds its own
    history = tok.encode("cde\n").ids + first + tok.encode("fg").ids + second
    with torch.no_grad():
        cold = model(torch.tensor([history])).logits[0]  # (T, V), no cache
    start = len(history) - len(second) - 1  # the position whose logits chose second[0]
    for i, got in enumerate(cached):  # float32; only the cache differs: 1e-5
        torch.testing.assert_close(got[0].float(), cold[start + i], atol=1e-5, rtol=1e-5)
    assert len(cached) == len(second)


def test_sampled_turns_follow_the_seed(model):
    a = ChatSession(model, max_new_tokens=8, temperature=1.5, seed=3)
    b = ChatSession(model, max_new_tokens=8, temperature=1.5, seed=3)
    for text in ("ab", "cd\n"):
        ra = [t.token_id for t in a.send(text).tokens]
        rb = [t.token_id for t in b.send(text).tokens]
        assert ra == rb


def test_a_full_context_slides_and_keeps_the_system_text(model):
    tok = model.meta.tokenizer
    system = tok.encode("j\n").ids
    chat = ChatSession(model, system="j\n", max_new_tokens=20, temperature=0)  # room: 48 - 20
    fed = fed_counter(model)
    r1 = chat.send("abcdefgh")
    assert r1.dropped == 0
    one = [t.token_id for t in r1.tokens]
    assert len(chat.tokens) == 2 + 8 + 20  # 30 > 28: the next turn slides
    fed.clear()
    r2 = chat.send("cd")
    history = system + tok.encode("abcdefgh").ids + one + tok.encode("cd").ids
    assert r2.dropped == len(history) - 28 == 4
    kept = system + history[2:][-26:]
    assert chat.tokens == kept and chat.cached == 0
    two = [t.token_id for t in r2.tokens]
    assert fed[0] == 28  # the kept conversation is encoded again into the emptied cache
    assert two == cold_reply(model, kept, 20)


def test_a_reply_stopped_inside_a_forward_pass_leaves_a_usable_conversation(model):
    """Ctrl-C while the second block runs: the first block's cache has the step, the second's
    not. The next turn cuts the caches back and continues as a cold run would."""
    chat = ChatSession(model, max_new_tokens=6, temperature=0)
    calls = {"n": 0}

    def interrupt(mod, args):
        calls["n"] += 1
        if calls["n"] == 3:  # the second step of the reply
            raise KeyboardInterrupt

    handle = model.blocks[1].register_forward_pre_hook(interrupt)
    made = []
    with pytest.raises(KeyboardInterrupt):
        for t in chat.send("abc\n").tokens:
            made.append(t.token_id)
    handle.remove()
    assert [c.length for c in chat.cache] == [6, 5]  # one layer ran the step, one did not
    second = [t.token_id for t in chat.send("de").tokens]
    history = (
        model.meta.tokenizer.encode("abc\n").ids + made + model.meta.tokenizer.encode("de").ids
    )
    assert chat.tokens[: len(history)] == history
    assert second == cold_reply(model, history, 6)


def test_reset_and_bad_settings(model):
    chat = ChatSession(model, system="ab", max_new_tokens=3, temperature=0)
    list(chat.send("cd").tokens)
    chat.reset()
    assert chat.tokens == model.meta.tokenizer.encode("ab").ids and chat.cached == 0
    with pytest.raises(ValueError, match="max_new_tokens=48 leaves no room.*48 tokens"):
        ChatSession(model, max_new_tokens=48)
    with pytest.raises(ValueError, match="temperature"):
        ChatSession(model, temperature=-1)
    with pytest.raises(ValueError, match="the turn 'xyz' cannot be tokenised"):
        chat.send("xyz")  # a character-level vocabulary without x, y, z
    assert chat.tokens == model.meta.tokenizer.encode("ab").ids


# ------------------------------------------------------------------------ the real command


class Terminal:
    """``attnkit chat`` on a pseudo-terminal: what it prints is read from the master side."""

    def __init__(self, argv: list[str]):
        self.master, slave = os.openpty()
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TERM": "dumb"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MAIN, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = ""

    def read_until(self, text: str, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        while text not in self.seen:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {text!r} within {timeout} s; the terminal shows {self.seen!r}"
                )
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the terminal closed before {text!r}: {self.seen!r}")
                self.seen += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
        return self.seen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


def test_chat_through_a_terminal(trained_dir, model):
    tok = model.meta.tokenizer
    argv = ["chat", "--model", str(trained_dir), "--temperature", "0", "--max-new-tokens", "11"]
    term = Terminal([*argv, "--device", "cpu", "--dtype", "float32"])
    try:
        term.read_until("> ")
        assert "48 tokens of context" in term.seen
        term.type("cde\n")
        want = tok.decode(cold_reply(model, tok.encode("cde\n").ids, 11))
        assert want == "abcdefghij\n"  # the model learned the cycle
        term.read_until("cde\n" + want + "> ")
        # the next turn continues the same conversation (its cached tokens)
        term.type("ab\n")
        history = tok.encode("cde\n").ids + tok.encode(want).ids + tok.encode("ab\n").ids
        want2 = tok.decode(cold_reply(model, history, 11))
        term.read_until("ab\n" + want2)
        term.type("/reset\n")
        term.read_until("[conversation reset]")
        term.type("/nope\n")
        term.read_until("unknown command '/nope'")
        term.type("xyz\n")
        term.read_until("cannot be tokenised")
        # past the context: 48 positions, 11 for the reply -> a long turn slides
        term.type("abcdefghijabcdefghijabcdefghijabcdefghij\n")
        term.read_until("[context full: dropped the oldest")
        term.read_until("> ")
        term.type("\x04")  # Ctrl-D on an empty line: end of input
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


@pytest.mark.slow
def test_chat_exit_command(trained_dir):
    term = Terminal(["chat", "--model", str(trained_dir), "--max-new-tokens", "3"])
    try:
        term.read_until("> ")
        term.type("/exit\n")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_chat_without_cuda_is_one_line_and_status_2(trained_dir, capsys, monkeypatch):
    from attnkit._util import devices
    from attnkit.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(["chat", "--model", str(trained_dir), "--device", "cuda"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "attnkit: error: --device 'cuda' needs CUDA, which is not available here; "
        "available: cpu (or 'auto')"
    ]


def test_chat_session_is_exported_from_generation():
    import attnkit.generation

    assert attnkit.generation.ChatSession is ChatSession
    assert "ChatSession" in attnkit.generation.__all__

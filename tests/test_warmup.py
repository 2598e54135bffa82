"""`model.warmup` compiles every graph a chat of that max_length needs, so the chat itself compiles none; the
terminal chat warms up on Ascend only."""
from glm_ms.decoding import bucket, graph_compilations, kv_bucket
from glm_ms.warmup import warmup_lengths
from tests.support import FAMILY_FOLDERS, tiny


def test_warmup_lengths_cover_each_prompt_bucket_once():
    lengths = warmup_lengths(160)
    assert lengths == [1, 17, 33, 65, 129]
    assert sorted({bucket(n) for n in range(1, 160)}) == [bucket(n) for n in lengths]
    assert warmup_lengths(2048, longest_prompt=40) == [1, 17, 33]


def test_after_warmup_a_chat_compiles_nothing():
    from glm_ms import AutoModel
    fresh = AutoModel.from_pretrained(FAMILY_FOLDERS["chatglm-6b"], dtype="float32")
    compiled = fresh.warmup(max_length=96)
    widths = {kv_bucket(n, bucket(96, smallest=64)) for n in range(1, 97)}  # decode graphs: one per cache prefix read
    assert compiled == len({bucket(n) for n in range(1, 96)}) + len(widths) == graph_compilations(fresh)
    tokenizer = tiny("chatglm-6b").tokenizer
    history = []
    for query, top_k in (("你好", 50), ("Write a poem about the sea, with tabs and more words.", 7)):
        _, history = fresh.chat(tokenizer, query, history=history, max_length=96, top_k=top_k, seed=1)
    assert graph_compilations(fresh) == compiled


def test_terminal_chat_warms_up_on_ascend_only(monkeypatch):
    from glm_ms import cli_chat, device
    calls = []

    class Model:
        def warmup(self, **options):
            calls.append(options)
    for where in ("CPU", "Ascend"):
        monkeypatch.setattr(device, "select_device", lambda *a, _where=where: _where)
        cli_chat.warm_up(Model(), 2048)
    assert calls == [dict(max_length=2048, longest_prompt=cli_chat.WARMUP_LONGEST_PROMPT)]

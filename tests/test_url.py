"""app/url.py: a page's query parameters are user input; each parser keeps what it can read and drops the rest."""

from __future__ import annotations

from app import url


def test_parsers_keep_what_they_can_read_and_drop_the_rest():
    q = {"k": "12", "bad": "1e3", "huge": "9" * 5000, "neg": "-3", "empty": "", "runs": "a~~b~", "mode": "layers",
         "evil": "../../etc/passwd"}
    assert url.parse_int(q, "k") == 12 and url.parse_int(q, "neg") == -3
    assert url.parse_int(q, "bad") is None and url.parse_int(q, "huge") is None  # no 5,000-digit integer
    assert url.parse_int(q, "empty") is None and url.parse_int(q, "missing") is None
    assert url.parse_list(q, "runs") == ["a", "b"] and url.parse_list(q, "empty") is None
    assert url.parse_choice(q, "mode", ("steps", "layers")) == "layers"
    assert url.parse_choice(q, "evil", ("steps", "layers")) is None
    assert url.parse_str(q, "evil") == "../../etc/passwd"  # text stays text: the pages check it against the store
    assert url.pick(q, ("k", "bad", "neg", "missing"), url.parse_int) == {"k": 12, "neg": -3}

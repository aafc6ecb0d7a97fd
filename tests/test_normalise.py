import pytest

from corpus.normalise import normalise_text


@pytest.mark.parametrize("raw, expected", [
    ("  Baby &amp; Me   Blanket ", "Baby & Me Blanket"),
    ("Doll 12&#34; Tall", 'Doll 12" Tall'),
    ("Tiny &amp;amp; More", "Tiny & More"),  # escaped twice in the dumps
    ('12" Doll', '12" Doll'),  # a bare quote is text, not quoting
    ("line<br />break<BR>here", "line break here"),
    ("tab\tnew\nline\r", "tab new line"),
    ("ｆｕｌｌ　ｗｉｄｔｈ ﬁne", "full width fine"),  # NFKC
    ("zero\u200bwidth\ufeff", "zerowidth"),
    ("Café Bébé™", "Café BébéTM"),
    ("AT&T <3 you", "AT&T <3 you"),
    ("", ""),
])
def test_normalise_text(raw, expected):
    assert normalise_text(raw) == expected


def test_lowercase_and_punctuation_are_opt_in():
    assert normalise_text("Baby's BOTTLE, 9-oz!") == "Baby's BOTTLE, 9-oz!"
    assert normalise_text("Baby's BOTTLE, 9-oz!", lowercase=True) == "baby's bottle, 9-oz!"
    assert normalise_text("Baby's BOTTLE, 9-oz!", strip_punctuation=True) == "Baby s BOTTLE 9 oz"


def reference_normalise(text: str, lowercase: bool = False, strip_punctuation: bool = False) -> str:
    """The rules as first written, each applied to every text: what the fast paths must reproduce."""
    import html
    import re
    import unicodedata

    for _ in range(3):
        if "&" not in text:
            break
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = re.sub(r"<\s*/?\s*(?:br|p|div|span|b|i|u|em|strong|li|ul|ol)\b[^>]*>", " ", text, flags=re.IGNORECASE)
    text = unicodedata.normalize("NFKC", text)
    text = re.sub("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]", "", re.sub("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufffd]", " ", text))
    if strip_punctuation:
        text = re.sub(r"[^\w\s]", " ", text)
    if lowercase:
        text = text.lower()
    return re.sub(r"\s+", " ", text).strip()


PIECES = ["a", "Σ", "ΣΑ", " ", "  ", "\n", "\t", "\r", "&amp;", "&quot;", "&#34;", "&#39;", "&lt;", "&gt;", "&#10;",
          "&NewLine;", "&amp;#10;", "&", "& ", "#", "34;", "<br", "<br />", "<BR>", ">", "< p>", "\u0301", "\u200b",
          "\ufeff", "\x00", "\x7f", "\x85", "\u2028", "ﬁ", "ｆ", "İ", "&lt;br&gt;", "é", "!", ",", "\xa0", "\u3000",
          "\x1c", "&#0;", "&#xD800;", "ς", "abc", "12\"", "&amp;amp;amp;amp;", "&amp", "&ampx;", "&#8203;", "&nbsp;"]


def test_fast_paths_give_the_rules_results():
    import random

    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 10)))
        for lowercase, strip in ((False, False), (True, False), (False, True), (True, True)):
            assert normalise_text(text, lowercase, strip) == reference_normalise(text, lowercase, strip), repr(text)
    for code in list(range(0x3000)) + [0xfeff, 0xff21, 0x1f600, 0x10ffff]:  # each character alone and inside a text
        for text in (chr(code), f"a {chr(code)}b ", chr(code) * 2):
            assert normalise_text(text) == reference_normalise(text), hex(code)

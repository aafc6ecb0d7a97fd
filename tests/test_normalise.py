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

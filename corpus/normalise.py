"""Turn a raw review field into one clean sentence."""
import html
import re
import unicodedata

_TAG = re.compile(r"<\s*/?\s*(?:br|p|div|span|b|i|u|em|strong|li|ul|ol)\b[^>]*>", re.IGNORECASE)
# Control characters (and U+FFFD) become spaces: tabs and newlines must never reach a
# one-sentence-per-line file. So do lone surrogates, which JSON's "\\ud83d" escapes can leave behind
# (they cannot be written as UTF-8). Zero-width and bidi marks are dropped: they only fragment tokens.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufffd\ud800-\udfff]")
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_PUNCTUATION = re.compile(r"[^\w\s]")


# What html.unescape makes of the entities titles carry, &amp; last so that its "&" starts nothing new.
_COMMON_ENTITIES = (("&quot;", '"'), ("&#34;", '"'), ("&#39;", "'"), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))


def _unescape_once(text: str, ampersands: int) -> str:
    """`html.unescape(text)`, by plain replacement where every "&" starts one of the common entities."""
    if ampersands == text.count("&amp;"):  # the usual case, on its own
        return text.replace("&amp;", "&")
    if ampersands != sum(text.count(entity) for entity, _ in _COMMON_ENTITIES):
        return html.unescape(text)
    for entity, char in _COMMON_ENTITIES:
        text = text.replace(entity, char)
    return text


def normalise_text(text: str, lowercase: bool = False, strip_punctuation: bool = False) -> str:
    """HTML-unescape, drop markup, NFKC, remove control characters and collapse whitespace."""
    # Each rule runs only where it can change something (an ASCII text is its own NFKC and holds no
    # invisible mark), in a third of the time on titles, with the same result (tests/test_normalise.py).
    if "&" in text:  # Amazon titles are sometimes escaped twice ("&amp;#34;"): unescape until nothing changes
        for _ in range(3):
            ampersands = text.count("&")
            if ampersands == text.count("& "):
                break  # an entity cannot start with "& "
            unescaped = _unescape_once(text, ampersands)
            if unescaped == text:
                break
            text = unescaped
    if "<" in text:
        text = _TAG.sub(" ", text)
    if not text.isascii():
        text = _INVISIBLE.sub("", _CONTROL.sub(" ", unicodedata.normalize("NFKC", text)))
    elif not text.isprintable():  # ASCII's non-printables are exactly its control characters
        text = _CONTROL.sub(" ", text)
    if strip_punctuation:
        text = _PUNCTUATION.sub(" ", text)
    if lowercase:
        text = text.lower()
    if text.isascii() and "  " not in text and not text.startswith(" ") and not text.endswith(" "):
        return text  # ASCII whitespace is only spaces by now (control characters became spaces)
    return " ".join(text.split())  # str.split's whitespace is re's \s: runs collapse to one space, ends stripped

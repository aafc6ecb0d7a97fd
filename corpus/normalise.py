"""Turn a raw review field into one clean sentence."""
import html
import re
import unicodedata

_TAG = re.compile(r"<\s*/?\s*(?:br|p|div|span|b|i|u|em|strong|li|ul|ol)\b[^>]*>", re.IGNORECASE)
# Control characters (and U+FFFD) become spaces: tabs and newlines must never reach a
# one-sentence-per-line file. Zero-width and bidi marks are dropped: they only fragment tokens.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufffd]")
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"\s+")
_PUNCTUATION = re.compile(r"[^\w\s]")


def normalise_text(text: str, lowercase: bool = False, strip_punctuation: bool = False) -> str:
    """HTML-unescape, drop markup, NFKC, remove control characters and collapse whitespace."""
    # Amazon titles are sometimes escaped twice ("&amp;#34;"): unescape until nothing changes.
    for _ in range(3):
        if "&" not in text:
            break
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    if "<" in text:
        text = _TAG.sub(" ", text)
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", _CONTROL.sub(" ", text))
    if strip_punctuation:
        text = _PUNCTUATION.sub(" ", text)
    if lowercase:
        text = text.lower()
    return _SPACES.sub(" ", text).strip()

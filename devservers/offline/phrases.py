"""What the scripted offline model understands in a user's words: tickers, quantities and intents.

Pure text functions and the patterns they use, kept apart from the decisions in
`devservers.offline.replies` so that how a phrase is read can be changed (and tested) on its own. A word
is a ticker if it is a known company name, a demo ticker, an explicit `$SYM`, or written like a ticker in
otherwise lower-case text.
"""

from __future__ import annotations

import re
from typing import Any

from demo.prices import COMPANY_TICKERS, DEMO_PRICES, TICKER_RE

__all__ = [
    "BUY_VERB",
    "NEGATED_BUY",
    "PRICE_INTENT",
    "SELL",
    "SHOW",
    "WATCH",
    "buy_items",
    "mentioned_symbols",
    "text_of",
]

_STOPWORDS = {
    "A", "AN", "AND", "ARE", "AT", "BUY", "CAN", "DO", "EACH", "FOR", "GET", "HOW", "I", "IN", "IS", "IT",
    "ME", "MORE", "MUCH", "MY", "NOW", "OF", "OK", "ON", "OR", "PLS", "PRICE", "SELL", "SHARE", "STOCK",
    "THE", "THEM", "TO", "UNITS", "UNIT", "US", "USD", "EUR", "WHAT", "YOU", "LOT", "SOME", "ANY", "ALL",
}  # fmt: skip

_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "fifty": 50, "hundred": 100,
}  # fmt: skip

_COMPANIES = "|".join(sorted(COMPANY_TICKERS, key=len, reverse=True))
BUY_VERB = re.compile(r"\b(?:buy|purchase|order|acquire|invest\s+in|get\s+me)\b", re.I)
NEGATED_BUY = re.compile(r"\b(?:don'?t|do\s+not|never|stop|cancel)\s+(?:\w+\s+)?(?:buy|purchas)", re.I)
SELL = re.compile(r"\b(?:sell|short)\b", re.I)
_BUY_ITEM = re.compile(
    r"(?:(?P<qty>\d[\d,]*|" + "|".join(_NUMBER_WORDS) + r")|(?P<one>an?)(?=\s+(?:shares?|stocks?)\b))"
    r"\s*(?:x\s*)?"
    r"(?:(?:shares?|stocks?|units?)\s+(?P<of>of\s+)?)?"
    rf"(?P<sym>(?:{_COMPANIES})\b|\$?[A-Za-z]{{1,5}}\b)"
    r"(?:\s+(?:shares?|stocks?))?"
    r"(?:\s*(?:at|@)\s*(?:(?:most|max(?:imum)?|a\s+(?:limit\s+)?price\s+of|(?:a\s+)?limit(?:\s+price)?"
    r"(?:\s+of)?)\s*)?\$?(?P<price>\d+(?:\.\d+)?))?",
    re.I,
)
PRICE_INTENT = re.compile(
    r"\b(?:price|prices|priced|trading|trade|trades|quote|worth|cost|costs|value|valued|how\s+much|going\s+for)\b",
    re.I,
)
WATCH = re.compile(r"\b(?:watch|watchlist|watch\s+list|track|follow)\b", re.I)
SHOW = re.compile(r"\b(?:show|list|what'?s|what\s+is|which|my)\b", re.I)
_WORD = re.compile(r"\$?[A-Za-z]+")


def text_of(content: Any) -> str:
    """The text of a message's `content`: a string, or the `text` parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return "" if content is None else str(content)


def _is_shouting(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) > 5 and all(c.isupper() for c in letters)


def _symbol(token: str, *, shouting: bool = False, allow_unknown: bool = False) -> str | None:
    """The ticker a word stands for, or None if it is just a word."""
    raw = token.strip()
    if raw.lower() in COMPANY_TICKERS:
        return COMPANY_TICKERS[raw.lower()]
    explicit = raw.startswith("$")
    upper = raw.removeprefix("$").upper()
    if not TICKER_RE.fullmatch(upper) or (upper in _STOPWORDS and not explicit):
        return None
    if upper in DEMO_PRICES or explicit or allow_unknown:
        return upper
    if raw.isupper() and not shouting:  # an unknown ticker written like one: let the tool judge it
        return upper
    return None


def _quantity(match: re.Match[str]) -> int:
    if match.group("one"):
        return 1
    qty = match.group("qty").lower()
    return _NUMBER_WORDS[qty] if qty in _NUMBER_WORDS else int(qty.replace(",", ""))


def buy_items(text: str) -> list[dict[str, Any]]:
    """The `{"ticker", "quantity"[, "price"]}` items a purchase sentence names, in order."""
    shouting = _is_shouting(text)
    items = []
    for match in _BUY_ITEM.finditer(text):
        symbol = _symbol(match.group("sym"), shouting=shouting, allow_unknown=bool(match.group("of")))
        if symbol is None:
            continue
        item: dict[str, Any] = {"ticker": symbol, "quantity": _quantity(match)}
        if match.group("price"):
            item["price"] = float(match.group("price"))
        items.append(item)
    return items


def mentioned_symbols(text: str) -> list[str]:
    """The tickers `text` mentions, each once, in order (a word after "of"/"for" may be an unknown one)."""
    shouting = _is_shouting(text)
    symbols: list[str] = []
    words = list(_WORD.finditer(text))
    for i, word in enumerate(words):
        after_of = i > 0 and words[i - 1].group().lower() in ("of", "for")
        symbol = _symbol(word.group(), shouting=shouting, allow_unknown=after_of)
        if symbol and symbol not in symbols:
            symbols.append(symbol)
    return symbols

"""BM25 ranking of operations for natural-language queries.

Each operation is one document made of weighted fields (name x3, summary x2, tags and
parameter names x1, the opening of the description x1). The inverted index is built once per
catalog; a query touches only the postings of its terms, so ranking 1,000+ operations takes
well under a millisecond per term.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from gateway.models import Operation

__all__ = ["SearchIndex", "tokenize"]

_STOP_WORDS = (
    "a an and are as at be by for from has have how i in into is it its me my of on or our "
    "please so that the their them then there these this those to us using via was we what "
    "when where which who will with you your all any some"
)
_STOP = frozenset(_STOP_WORDS.split())
# Canonical nouns, applied to queries and documents alike.
_CANON = {
    "repository": "repo", "repositories": "repo", "repos": "repo",
    "organization": "org", "organizations": "org", "orgs": "org",
    "pr": "pull", "prs": "pull", "mail": "email", "e-mail": "email",
    "stargazer": "star", "starred": "star",
}
# Query-side expansions: how people phrase a task → the words APIs use (lower weight).
_EXPAND: dict[str, tuple[str, ...]] = {
    "add": ("create",), "new": ("create",), "make": ("create",), "publish": ("create",),
    "file": ("create",), "submit": ("create",), "post": ("create",), "invite": ("add",),
    "fetch": ("get",), "retrieve": ("get",), "show": ("get", "list"), "read": ("get",),
    "view": ("get",), "detail": ("get",), "lookup": ("get",), "look": ("get",),
    "find": ("list", "search"), "which": ("list",), "who": ("list",),
    "edit": ("update",), "change": ("update",), "modify": ("update",), "close": ("update",),
    "rename": ("update",), "remove": ("delete",), "destroy": ("delete",), "drop": ("delete",),
    "approve": ("review",), "trigger": ("dispatch", "create"), "run": ("dispatch",),
    "meeting": ("event",), "appointment": ("event",), "calendar": ("event",),
    "money": ("transfer",), "pay": ("transfer",), "payment": ("transfer",),
    "fund": ("balance",), "people": ("contact",), "person": ("contact",),
    "colleague": ("contact",), "contributed": ("contributor",), "contribut": ("contributor",),
    "profile": ("user",), "sent": ("outbox", "send"),
}
_EXPANSION_WEIGHT = 0.4
# (field, weight, length normalisation b) for BM25F.
_FIELDS = (("name", 3.0, 0.75), ("summary", 2.0, 0.75), ("tags", 1.0, 0.3),
           ("params", 0.7, 0.5), ("description", 0.5, 0.75), ("param_text", 0.3, 0.75))
_DESCRIPTION_TOKENS = 80


def _stem(token: str) -> str:
    if token in _CANON:
        return _CANON[token]
    if len(token) > 4 and token.endswith("ies"):
        token = token[:-3] + "y"
    elif len(token) > 4 and token.endswith(("ches", "shes", "sses", "xes")):
        token = token[:-2]
    elif len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        token = token[:-1]
    token = _CANON.get(token, token)
    if len(token) > 5 and token.endswith("ing"):
        token = token[:-3]
    elif len(token) > 4 and token.endswith("ed"):
        token = token[:-2]
    elif len(token) > 4 and token.endswith("e"):
        token = token[:-1]
    return token


def _words(text: str) -> list[str]:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return [w for w in re.findall(r"[a-z0-9]+", text.lower())
            if w not in _STOP and (len(w) > 1 or w.isdigit())]


def tokenize(text: str) -> list[str]:
    """Lower-cased, camelCase/snake_case-split, stop-word-free, lightly stemmed terms."""
    return [_stem(w) for w in _words(text)]


def _query_terms(query: str) -> dict[str, float]:
    terms: dict[str, float] = {}
    for word in _words(query):
        stem = _stem(word)
        terms[stem] = 1.0
        for extra in _EXPAND.get(word, ()) + _EXPAND.get(stem, ()):
            for term in tokenize(extra):
                terms.setdefault(term, _EXPANSION_WEIGHT)
    return terms


def _fields(op: Operation) -> dict[str, list[str]]:
    props = op.input_schema.get("properties") or {}
    param_text = " ".join(
        str(s.get("description", ""))[:200] for s in props.values() if isinstance(s, dict))
    return {
        "name": tokenize(op.short_name),
        "summary": tokenize(op.summary) + tokenize(op.backend),
        "tags": tokenize(" ".join(op.tags)),
        "params": tokenize(" ".join(p.name for p in op.parameters)),
        "description": tokenize(op.description)[:_DESCRIPTION_TOKENS],
        "param_text": tokenize(param_text)[:_DESCRIPTION_TOKENS],
    }


class SearchIndex:
    """A BM25F index (per-field length normalisation) over a fixed list of operations."""

    def __init__(self, operations: Sequence[Operation], *, k1: float = 1.2) -> None:
        self.k1 = k1
        docs = [_fields(op) for op in operations]
        n = len(docs)
        avg = {f: (sum(len(d[f]) for d in docs) / n if n else 1.0) or 1.0 for f, _, _ in _FIELDS}
        # term -> [(doc, pseudo term frequency)]: the field-weighted, length-normalised tf.
        self._postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._name_terms: list[frozenset[str]] = []
        for i, doc in enumerate(docs):
            tf: dict[str, float] = defaultdict(float)
            for field, weight, b in _FIELDS:
                terms = doc[field]
                if not terms:
                    continue
                norm = 1 - b + b * len(terms) / avg[field]
                for term, count in Counter(terms).items():
                    tf[term] += weight * count / norm
            for term, value in tf.items():
                self._postings[term].append((i, value))
            self._name_terms.append(frozenset(doc["name"]))
        self._idf = {
            t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self._postings.items()
        }

    def search(self, query: str, limit: int = 10) -> list[tuple[int, float]]:
        """``(document index, score)`` pairs, best first, only documents matching a term."""
        terms = _query_terms(query)
        if not terms or limit <= 0:
            return []
        scores: dict[int, float] = defaultdict(float)
        k1 = self.k1
        for term, qweight in terms.items():
            idf = self._idf.get(term)
            if idf is None:
                continue
            for doc, tf in self._postings[term]:
                scores[doc] += qweight * idf * tf * (k1 + 1) / (tf + k1)
        # Name precision: an operation whose name is mostly made of the query's words
        # ("list pull requests" -> pulls_list) beats one whose long name merely contains them.
        for doc in scores:
            name = self._name_terms[doc]
            if name:
                scores[doc] *= 1 + 0.5 * len(name & terms.keys()) / len(name)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(doc, round(score, 6)) for doc, score in ranked[:limit]]

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
# Canonical forms, so "repository"/"repos"/"repo" and "PR"/"pull request" meet.
_CANON = {
    "repository": "repo", "repositories": "repo", "repos": "repo",
    "organization": "org", "organizations": "org", "orgs": "org",
    "pr": "pull", "prs": "pull", "mail": "email", "e-mail": "email", "emails": "email",
    "message": "email", "messages": "email",
    "meeting": "event", "meetings": "event", "appointment": "event",
    "calendar": "event", "calendars": "event",
    "money": "transfer", "pay": "transfer", "payment": "transfer", "payments": "transfer",
    "send": "send", "sent": "send", "remove": "delete", "removes": "delete",
    "fetch": "get", "retrieve": "get", "show": "get", "read": "get", "view": "get",
    "add": "create", "new": "create", "make": "create", "open": "open",
    "people": "contact", "person": "contact", "colleague": "contact", "colleagues": "contact",
    "workflow": "workflow", "ci": "action", "actions": "action",
    "starred": "star", "stargazer": "star", "stargazers": "star",
    "collaborator": "collaborator", "member": "member", "members": "member",
    "balance": "balance", "funds": "balance",
}
_FIELDS = (("name", 3), ("summary", 2), ("tags", 1), ("params", 1), ("description", 1))
_DESCRIPTION_TOKENS = 60


def _stem(token: str) -> str:
    if token in _CANON:
        return _CANON[token]
    if len(token) > 4 and token.endswith("ies"):
        token = token[:-3] + "y"
    elif len(token) > 4 and token.endswith(("ches", "shes", "sses", "xes")):
        token = token[:-2]
    elif len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        token = token[:-1]
    return _CANON.get(token, token)


def tokenize(text: str) -> list[str]:
    """Lower-cased, camelCase/snake_case-split, stop-word-free, lightly stemmed terms."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    out = []
    for raw in re.findall(r"[A-Za-z0-9]+", text.lower()):
        if raw in _STOP or (len(raw) < 2 and not raw.isdigit()):
            continue
        out.append(_stem(raw))
    return out


def _fields(op: Operation) -> dict[str, list[str]]:
    params = " ".join(p.name for p in op.parameters)
    return {
        "name": tokenize(op.short_name) + tokenize(op.backend),
        "summary": tokenize(op.summary),
        "tags": tokenize(" ".join(op.tags)),
        "params": tokenize(params),
        "description": tokenize(op.description)[:_DESCRIPTION_TOKENS],
    }


class SearchIndex:
    """An Okapi BM25 index over a fixed list of operations."""

    def __init__(self, operations: Sequence[Operation], *, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self._postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._lengths: list[float] = []
        self._name_terms: list[frozenset[str]] = []
        for i, op in enumerate(operations):
            fields = _fields(op)
            weighted: Counter[str] = Counter()
            for field, weight in _FIELDS:
                for term in fields[field]:
                    weighted[term] += weight
            self._lengths.append(float(sum(weighted.values())))
            self._name_terms.append(frozenset(fields["name"]))
            for term, tf in weighted.items():
                self._postings[term].append((i, float(tf)))
        n = len(self._lengths)
        self._avg = (sum(self._lengths) / n) if n else 1.0
        self._idf = {
            t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self._postings.items()
        }

    def search(self, query: str, limit: int = 10) -> list[tuple[int, float]]:
        """``(document index, score)`` pairs, best first, only documents matching a term."""
        terms = list(dict.fromkeys(tokenize(query)))
        if not terms or limit <= 0:
            return []
        scores: dict[int, float] = defaultdict(float)
        k1, b, avg = self.k1, self.b, self._avg
        for term in terms:
            idf = self._idf.get(term)
            if idf is None:
                continue
            for doc, tf in self._postings[term]:
                norm = k1 * (1 - b + b * self._lengths[doc] / avg)
                scores[doc] += idf * tf * (k1 + 1) / (tf + norm)
        # Small bonus when every query term is in the operation's name: exact-ish name hits
        # ("get balance" → get_balance) should win over long descriptions that mention them.
        wanted = set(terms)
        for doc in scores:
            if wanted <= self._name_terms[doc]:
                scores[doc] *= 1.25
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(doc, round(score, 6)) for doc, score in ranked[:limit]]

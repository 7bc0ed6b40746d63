"""Ranking of operations for natural-language queries: BM25F, then a re-rank of the head.

First stage: each operation is one document made of weighted fields (name x3, summary x2, tags
x1, parameter names x0.7, the opening of the description x0.5, parameter descriptions x0.3),
scored by BM25F with per-field length normalisation. Terms are lower-cased, camelCase /
snake_case-split, stop-word-free and lightly stemmed; run-together name words ("deletefile")
also count as their halves. HTML in summaries and descriptions is dropped, and a summary that
only repeats the name ("AcceptDispute") is stood in for by the description's first words.
Query words are expanded through a table of generic everyday-to-API words ("text" -> message,
"credit" -> balance, "hang up" -> terminate, "spend" -> usage) at a lower weight.

Second stage: the best 40 are re-scored by how much of the operation's name the query covers
(IDF-weighted, so a long name's rare unmatched words cost more than its common prefix;
parameter placeholders such as ``id`` do not count), by whether the operation does what the
query's verb asks (list / get / create / update / delete: the query's first action word against
the name's verb, or the HTTP method and path shape; a name that is only method and path, as
in ``post_customers_customer``, says no more than its method, and a write named by a verb of
its own, ``cancel_invoice``, does what that verb asks), by the share of the query's adjacent
word pairs found adjacent (either order) in the name or summary, and by whether a query about
one item ("this legal hold", "one of our lists", "by id") meets an operation on one item.
Undoing is an action of its own: "undo the delete", "bring back a suspended user" ask for an
``un-`` or restoring operation; enabling and disabling are each other's opposites. Multi-word
verbs are rewritten first ("get rid of", "turn off", "take ... off", "money back"), and a
clause after "without" / "instead of" is dropped; a question ("is ...", "how many ...") or a
noun phrase without a verb ("emoji reactions on a comment") asks for a read, and a later past
form ("a message the bot already posted") is not the query's verb.

The inverted index is built once per catalog; a query touches only the postings of its terms
(~1-2 ms over 1,000-2,200 operations, bench/search_latency.py). Pure Python, no model; the
word tables are in ``_search_words.py``.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import pairwise

from gateway.catalog._search_words import (
    _AFTER_VERB,
    _ARTICLES,
    _CANON,
    _EXPAND,
    _METHOD_ACTIONS,
    _NAME_ACTIONS,
    _PAST_FORMS,
    _PHRASES,
    _QUERY_ACTIONS,
    _QUESTION_WORDS,
    _STOP,
    _UNDO_WORDS,
    _UNDOING,
    _VERB_ONLY,
)
from gateway.models import Operation

__all__ = ["SearchIndex", "tokenize"]

_EXPANSION_WEIGHT = 0.5
# (field, weight, length normalisation b) for BM25F.
_FIELDS = (("name", 3.0, 0.75), ("summary", 2.0, 0.75), ("tags", 1.0, 0.3),
           ("params", 0.7, 0.5), ("description", 0.5, 0.75), ("param_text", 0.3, 0.75))
_DESCRIPTION_TOKENS = 80


def _stem(token: str) -> str:
    if token in _CANON:
        return _CANON[token]
    if len(token) > 6 and token.endswith(("lly", "ely", "cly", "tly", "sly")):
        token = token[:-2]  # locally -> local, privately -> private, publicly -> public
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


# "reserved_i_ps", "i_ds": a snake-cased plural acronym (IPs, IDs), back as one singular word.
_ACRONYM_PLURAL = re.compile(r"(?<![a-z0-9])([a-z])_([a-z])s(?![a-z0-9])")


def _words(text: str) -> list[str]:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text).lower()
    if "_" in text:
        text = _ACRONYM_PLURAL.sub(r"\1\2", text)
    return [w for w in re.findall(r"[a-z0-9]+", text)
            if w not in _STOP and (len(w) > 1 or w.isdigit())]


def tokenize(text: str) -> list[str]:
    """Lower-cased, camelCase/snake_case-split, stop-word-free, lightly stemmed terms."""
    return [_stem(w) for w in _words(text)]


def _expansions(word: str, stem: str) -> tuple[str, ...]:
    """The table's words for ``word`` under its own, stemmed or base form ("subscribed",
    "approved", "invites" find the entries of "subscribe", "approve", "invite")."""
    forms = [word, stem]
    if word.endswith("ed"):
        forms += [word[:-1], word[:-2]]
    elif word.endswith("ing"):
        forms += [word[:-3], word[:-3] + "e"]
    elif word.endswith("s"):
        forms.append(word[:-1])
    out: list[str] = []
    for form in dict.fromkeys(forms):
        out += _EXPAND.get(form, ())
    return tuple(out)




def _query_terms(query: str) -> dict[str, float]:
    terms: dict[str, float] = {}
    verb = _action_word(query)
    for i, word in enumerate(_words(query)):
        stem = _stem(word)
        weight = 1.0
        # "list" says what to do only as the verb or first word: "contact lists" is a noun.
        if word == verb or ((word in _VERB_ONLY or stem in _VERB_ONLY)
                            and (not i or stem != "list")):
            weight = _EXPANSION_WEIGHT
        terms[stem] = max(terms.get(stem, 0.0), weight)
        for extra in _expansions(word, stem):
            for term in tokenize(extra):
                terms.setdefault(term, _EXPANSION_WEIGHT)
    # Stop words carry no term of their own but may still say what is meant ("who").
    for word in re.findall(r"[a-z]+", query.lower()):
        if word in _STOP:
            for extra in _EXPAND.get(word, ()):
                for term in tokenize(extra):
                    terms.setdefault(term, _EXPANSION_WEIGHT)
    return terms


_TAG = re.compile(r"<[^>]*>")
# A description's first sentence stands in for a summary that only repeats the name.
_SENTENCE_TOKENS = 30


def _plain(text: str) -> str:
    """Text without HTML markup: specs that write their prose in HTML (``<p>``, ``<a
    href="/docs/...">``) would otherwise index their tags' and links' words."""
    return _TAG.sub(" ", text) if "<" in text else text


def _fields(op: Operation) -> dict[str, list[str]]:
    props = op.input_schema.get("properties") or {}
    param_text = " ".join(
        _plain(str(s.get("description", "")))[:200] for s in props.values()
        if isinstance(s, dict))
    name = tokenize(op.short_name)
    description = tokenize(_plain(op.description))
    summary = tokenize(_plain(op.summary))
    if len(op.summary.split()) == 1 and set(summary) <= set(name):
        # "AcceptDispute" for accept_dispute: the summary says nothing the name does not.
        summary += description[:_SENTENCE_TOKENS]
    return {
        "name": name,
        "summary": summary + tokenize(op.backend),
        "tags": tokenize(" ".join(op.tags)),
        "params": tokenize(" ".join(p.name for p in op.parameters)),
        "description": description[:_DESCRIPTION_TOKENS],
        "param_text": tokenize(param_text)[:_DESCRIPTION_TOKENS],
    }





# "switch off an account without deleting it": what follows says what is not wanted.
_NEGATED = re.compile(r"\b(?:without|instead of|rather than|but not|except)\b[^,;.?!]*",
                      re.IGNORECASE)


def _rewrite(query: str) -> str:
    for pattern, repl in _PHRASES:
        query = pattern.sub(repl, query)
    return _NEGATED.sub(" ", query)


_STEMMED_ACTIONS = {_stem(w): a for w, a in _NAME_ACTIONS.items()}
# Query verbs that in an operation's name are more often nouns ("file", "text", "order").
_NOUN_LIKE = frozenset(["file", "text", "post", "order", "info", "detail", "new", "all",
                        "which", "who", "what", "print", "display", "set", "open", "view",
                        "see", "look", "show", "find", "search", "list", "check"])
_NONE: frozenset[str] = frozenset()
# Name words that only stand for a path parameter ("get_legal_hold_policies_id"): no part of
# what the operation is, so the query is not asked to cover them.
_PLACEHOLDERS = frozenset(["id", "uuid", "gid"])


def _method_named(op: Operation) -> bool:
    """Whether the name is only the HTTP method and the path (``post_customers_customer``):
    its verb then says no more than the method does."""
    words = _words(op.short_name.replace("_", " "))
    return bool(words) and words[0] == op.method.lower()


def _op_actions(op: Operation) -> frozenset[str]:
    words = _words(op.short_name.replace("_", " "))
    last = [seg for seg in op.path.split("/") if seg]
    item = bool(last) and last[-1].startswith("{")
    if op.method == "GET":
        from_method: tuple[str, ...] = ("get",) if item else ("list",)
    elif op.method == "POST" and item:
        from_method = ("update",)  # a POST to one item changes it; it adds nothing to a list
    else:
        from_method = _METHOD_ACTIONS.get(op.method, ())
    if _method_named(op):
        words = words[1:]
    named = {_NAME_ACTIONS[w] for w in words if w in _NAME_ACTIONS}
    if not named:
        # An operation named by what it does ("cancel_invoice", "resume_subscription",
        # "auth_revoke", RPC-style APIs whatever their method) also does the action that verb
        # asks for in a query.
        for w in words:
            if w not in _NOUN_LIKE:
                from_method = (*from_method, *_QUERY_ACTIONS.get(w, ()))
    if named:
        if "get" in named and op.method == "GET" and not item:
            named.add("list")
        if named & {"enable", "disable"}:  # turning on or off is an update, not its opposite
            named.add("update")
        return frozenset(named)
    return frozenset(from_method)


def _past(word: str) -> bool:
    return (len(word) > 4 and word.endswith("ed")) or word in _PAST_FORMS


def _action_word(query: str) -> str:
    """The first word that names an action (imperatives lead with their verb; a later "file"
    or "list" is more often a noun), or "". A later past form tells what was done, not what
    to do ("a message the bot already posted", "evidence I uploaded")."""
    word: str
    for i, word in enumerate(re.findall(r"[a-z]+", query.lower())):
        if i and _past(word):
            continue
        if (not i and _plural(word) and word not in _QUERY_ACTIONS
                and not {"get", "list"} & set(_QUERY_ACTIONS.get(_stem(word), ()))):
            continue  # "requests to join ...", "refunds issued at ...": a noun, not a verb
        if _QUERY_ACTIONS.get(word) or _QUERY_ACTIONS.get(_stem(word)):
            return word
    return ""


_UNDO_NAME_TERMS = frozenset(_stem(w) for w in ("undo", "restore", "revert", "reinstate",
                                                "recover"))


def _undo_asked(query: str) -> bool:
    raw = re.findall(r"[a-z]+", query.lower())
    return any(w in _UNDO_WORDS or (w == "back" and raw[i + 1:i + 2] != ["up"])
               for i, w in enumerate(raw))


def _query_actions(query: str) -> frozenset[str]:
    if _undo_asked(query):
        return frozenset(("undo",))
    word = _action_word(query)
    return frozenset(_QUERY_ACTIONS.get(word) or _QUERY_ACTIONS.get(_stem(word)) or ())




def _head_span(query: str) -> list[str]:
    """The words from after the action word (or the start) to the end of the first noun
    phrase, determiners included: "fetch one audience segment and ..." -> one audience
    segment."""
    raw = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", query).lower())
    verb = _action_word(query)
    start = raw.index(verb) + 1 if verb in raw else 0
    span: list[str] = []
    phrase = False
    for word in raw[start:]:
        if word in _STOP or word in _ARTICLES:
            if phrase and word not in _ARTICLES:
                break
            span.append(word)
            continue
        phrase = True
        span.append(word)
    return span if phrase else []


def _query_head(query: str) -> str:
    """The stemmed last word of the first noun phrase after the action word (or from the
    start): "set up a new verification service for our login flow" -> servic."""
    nouns = [w for w in _head_span(query) if w not in _STOP and w not in _ARTICLES]
    return _stem(nouns[-1]) if nouns else ""


# Second stage: the best _RERANK_DEPTH first-stage candidates are re-scored, multiplied by
# (1 + _W_NAME x the IDF-weighted share of the operation's name the query covers; a name verb
# counts as covered when it does what the query's verb asks, a term reached only through a
# synonym counts _COVER_EXPANDED) and by (1 + _W_ACTION) when the operation's action is the one
# the query asks for, and by (1 + _W_BIGRAM x the share of the query's adjacent word pairs that
# are adjacent, in either order, in the name or summary), and by (1 + _W_ONE) for a query about
# one item and an operation on one. The factors only raise a score, so the tail keeps its order
# below the head. The weights were fit by coordinate ascent over every tuned split in round 5
# (docs/search-quality.md); the head-noun factor of round 3 fit to 0 there and was dropped.
_RERANK_DEPTH = 40
_W_NAME = 2.0
_W_ACTION = 0.75
_COVER_EXPANDED = 0.6


def _split_compounds(operations: Sequence[Operation],
                     docs: list[dict[str, list[str]]]) -> list[dict[str, tuple[str, str]]]:
    """Run-together name words ("deletefile", "hashsum") also count as their two halves when
    both halves are words the catalog uses elsewhere; ``un-`` words as the word and "undo"."""
    vocab: set[str] = set()
    for doc in docs:
        vocab.update(doc["name"])
        vocab.update(doc["summary"])
    halves: list[dict[str, tuple[str, str]]] = []
    for op, doc in zip(operations, docs, strict=True):
        extra: list[str] = []
        split: dict[str, tuple[str, str]] = {}
        halves.append(split)
        for word in _words(op.short_name):
            if word.startswith("un") and _stem(word[2:]) in vocab:
                extra += [_stem(word[2:]), "undo"]
                split[_stem(word)] = (_stem(word[2:]), "undo")
                continue
            if len(word) < 7 or not word.isalpha():
                continue
            for i in range(len(word) - 3, 2, -1):
                head, tail = word[:i], word[i:]
                if head in _STOP or tail in _STOP:
                    continue
                if _stem(head) in vocab and _stem(tail) in vocab:
                    extra += [_stem(head), _stem(tail)]
                    split[_stem(word)] = (_stem(head), _stem(tail))
                    break
        doc["name"] = doc["name"] + extra
    return halves


_W_BIGRAM = 0.25

# x (1 + _W_ONE) for an operation on one item (its path ends in a parameter) when the query
# asks about one ("one of our designs", "this legal hold", "a single entry", "by id").
_W_ONE = 0.25
_ONE_WORDS = frozenset(["one", "single", "this", "that", "particular", "specific", "given",
                        "individual", "id"])
_MANY_WORDS = frozenset(["all", "every", "each", "list", "many", "any"])


def _asks_for_one(query: str) -> bool:
    """Whether the thing asked about is one item: a word of _ONE_WORDS in its noun phrase
    ("this legal hold", "one of our lists"; not "certificates of this setup"), or "by id"."""
    span = set(_head_span(query))
    if span & _MANY_WORDS:
        return False
    return bool(span & _ONE_WORDS) or " by id" in query.lower()



def _pairs(terms: Sequence[str]) -> frozenset[frozenset[str]]:
    """Adjacent term pairs, either order ("repository issues" and "issues of a repository")."""
    return frozenset(frozenset(p) for p in pairwise(terms) if p[0] != p[1])


def _plural(word: str) -> bool:
    return len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is"))


def _cover(weight: float) -> float:
    return 1.0 if weight >= 1.0 else (_COVER_EXPANDED if weight > 0 else 0.0)


class SearchIndex:
    """A BM25F index (per-field length normalisation) over a fixed list of operations, with a
    second-stage re-rank of the best candidates (name coverage, verb vs action)."""

    def __init__(self, operations: Sequence[Operation], *, k1: float = 1.2) -> None:
        self.k1 = k1
        docs = [_fields(op) for op in operations]
        self._halves = _split_compounds(operations, docs)
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
            self._name_terms.append(frozenset(doc["name"]) - _PLACEHOLDERS)
        self._idf = {
            t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self._postings.items()
        }
        self._name_mass = [sum(self._idf.get(t, 0.0) for t in name) for name in self._name_terms]
        # Name terms that are verbs, by the actions they stand for ("fetch" -> get).
        self._name_verbs = [{t: frozenset((_STEMMED_ACTIONS[t],)) for t in name
                             if t in _STEMMED_ACTIONS} for name in self._name_terms]
        self._actions = [_op_actions(op) | ({"undo"} if name & _UNDO_NAME_TERMS else set())
                         for op, name in zip(operations, self._name_terms, strict=True)]
        for op, verbs, actions in zip(operations, self._name_verbs, self._actions, strict=True):
            if _method_named(op) and actions:
                # the method word covers whichever action the method and path do
                verbs[_stem(op.method.lower())] = actions
        self._one_item = [bool(op.path.rstrip("/").endswith("}")) for op in operations]
        self._name_vocab: frozenset[str] = frozenset().union(*self._name_terms)
        self._bigrams = [_pairs(d["name"]) | _pairs(d["summary"]) for d in docs]


    def _covered(self, doc: int, terms: dict[str, float], wanted: frozenset[str]) -> float:
        """The IDF mass of the name terms the query covers: a term it has (a synonym-only
        match counts _COVER_EXPANDED), a name verb doing the action asked, a run-together word
        whose halves it covers ("unstar" for "remove my star"), "undo" for a removal."""
        verbs = self._name_verbs[doc]
        halves = self._halves[doc]
        undo = "delete" in wanted or "undo" in wanted
        idf = self._idf
        total = 0.0
        for t in self._name_terms[doc]:
            if verbs.get(t, _NONE) & wanted or (undo and t == "undo"):
                total += idf[t]
                continue
            w = terms.get(t, 0.0)
            c = 1.0 if w >= 1.0 else (_COVER_EXPANDED if w > 0 else 0.0)
            if c < 1.0 and t in halves:
                c = max(c, min(self._half_cover(h, terms, verbs, wanted, undo)
                               for h in halves[t]))
            total += idf[t] * c
        return total

    @staticmethod
    def _half_cover(t: str, terms: dict[str, float], verbs: dict[str, frozenset[str]],
                    wanted: frozenset[str], undo: bool) -> float:
        if verbs.get(t, _NONE) & wanted or (undo and t == "undo"):
            return 1.0
        return _cover(terms.get(t, 0.0))

    def _wanted(self, query: str) -> frozenset[str]:
        raw = re.findall(r"[a-z]+", query.lower())
        if raw and raw[0] in _QUESTION_WORDS and not _undo_asked(query):
            return frozenset(("get", "list"))
        if raw and not _query_actions(raw[0]) and (
                raw[0] in _ARTICLES or _plural(raw[0])) and not _undo_asked(query):
            # "every open ticket filed in ...", "webhooks set up for our team": a noun
            # phrase whose later verb is a participle; a read.
            return frozenset(("list",) if _plural(raw[0]) else ("list", "get"))
        wanted = _query_actions(query)
        if not wanted:
            words = _words(query)
            # "comment on an issue", "fork a repository": a resource used as the verb.
            if (words and not words[0].endswith("s") and _stem(words[0]) in self._name_vocab
                    and words[0] not in _UNDOING
                    and (len(raw) < 2 or raw[1] in _AFTER_VERB)):
                wanted = frozenset(("create",))
            elif words and (raw[0] in _STOP or raw[0] in _ARTICLES or _plural(raw[0])
                            or (len(raw) > 1 and raw[1] not in _AFTER_VERB)):
                # A noun phrase, no verb ("webhooks of our team", "the caller ids verified
                # for ..."): a read; a plural head asks for a list.
                head = _query_head(query)
                plural = any(_stem(w) == head and w != head for w in words)
                wanted = frozenset(("list",) if plural else ("list", "get"))
        return wanted

    def search(self, query: str, limit: int = 10) -> list[tuple[int, float]]:
        """``(document index, score)`` pairs, best first, only documents matching a term."""
        query = _rewrite(query)
        terms = _query_terms(query)
        if not terms or limit <= 0:
            return []
        scores: dict[int, float] = defaultdict(float)
        k1 = self.k1
        k1p = k1 + 1
        for term, qweight in terms.items():
            idf = self._idf.get(term)
            if idf is None:
                continue
            w = qweight * idf  # hoisted: the same products in the same order, bit for bit
            for doc, tf in self._postings[term]:
                scores[doc] += w * tf * k1p / (tf + k1)
        depth = max(_RERANK_DEPTH, limit)
        # Only the head is re-ranked and at most `limit` are returned: select it instead of
        # sorting every match. The depth-th best score (floats, no key: fast) bounds it; what
        # reaches it is sorted as before, so ties at the bound fall the same way.
        if len(scores) > depth:
            bound = heapq.nlargest(depth, scores.values())[-1]
            first = sorted(((d, v) for d, v in scores.items() if v >= bound),
                           key=_by_score)[:depth]
        else:
            first = sorted(scores.items(), key=_by_score)
        wanted = self._wanted(query)
        stems = [_stem(w) for w in _words(query)]
        pairs = _pairs(stems)
        one = _asks_for_one(query)
        head = []
        for doc, score in first[:depth]:
            if one and self._one_item[doc]:
                score *= 1 + _W_ONE
            mass = self._name_mass[doc]
            if mass:
                score *= 1 + _W_NAME * self._covered(doc, terms, wanted) / mass
            if wanted & self._actions[doc]:
                score *= 1 + _W_ACTION
            if pairs:
                score *= 1 + _W_BIGRAM * len(pairs & self._bigrams[doc]) / len(pairs)
            head.append((doc, score))
        ranked = sorted(head, key=_by_score)
        return [(doc, round(score, 6)) for doc, score in ranked[:limit]]


def _by_score(kv: tuple[int, float]) -> tuple[float, int]:
    return (-kv[1], kv[0])

"""The second stage of the catalog search (gateway/catalog/search.py) on small synthetic
catalogs: each factor on its own, so a regression names its cause."""

from __future__ import annotations

from gateway.catalog.search import (
    SearchIndex,
    _query_head,
    _undo_asked,
    tokenize,
)
from gateway.models import Operation


def op(name: str, method: str, path: str, summary: str = "") -> Operation:
    return Operation(name=f"svc.{name}", backend="svc", operation_id=name, summary=summary,
                     method=method, path=path)


CALLS = [
    op("list_call", "GET", "/Calls.json", "Retrieve a list of calls"),
    op("fetch_call", "GET", "/Calls/{Sid}.json", "Fetch the call specified by the Sid"),
    op("create_call", "POST", "/Calls.json", "Create a new outgoing call"),
    op("update_call", "POST", "/Calls/{Sid}.json", "Redirects or terminates a call"),
    op("delete_call", "DELETE", "/Calls/{Sid}.json", "Delete a call log record"),
    op("update_call_recording", "POST", "/Calls/{CallSid}/Recordings/{Sid}.json",
       "Changes the status of the recording to paused, stopped, or in-progress"),
]


def first(ops: list[Operation], query: str) -> str:
    hits = SearchIndex(ops).search(query, limit=3)
    return ops[hits[0][0]].short_name if hits else ""


def test_the_query_verb_picks_the_operation_that_does_it() -> None:
    assert first(CALLS, "place a new call") == "create_call"
    assert first(CALLS, "show every call from today") == "list_call"
    assert first(CALLS, "look up one call by its id") == "fetch_call"
    assert first(CALLS, "remove a call from the log") == "delete_call"
    assert first(CALLS, "edit a call") == "update_call"


def test_without_a_name_verb_the_method_and_path_say_what_an_operation_does() -> None:
    ops = [op("widget_a", "GET", "/widgets", "Widgets"),
           op("widget_b", "GET", "/widgets/{id}", "Widgets"),
           op("widget_c", "POST", "/widgets", "Widgets"),
           op("widget_d", "DELETE", "/widgets/{id}", "Widgets")]
    assert first(ops, "delete a widget") == "widget_d"
    assert first(ops, "add a widget") == "widget_c"
    assert first(ops, "list the widgets") == "widget_a"


def test_a_resource_used_as_the_verb_means_create() -> None:
    ops = [op("issues_list_comments", "GET", "/issues/{n}/comments", "List issue comments"),
           op("issues_create_comment", "POST", "/issues/{n}/comments", "Create an issue comment"),
           op("issues_get_comment", "GET", "/comments/{id}", "Get an issue comment")]
    assert first(ops, "comment on an issue") == "issues_create_comment"


def test_run_together_name_words_count_as_their_halves() -> None:
    # "deletefile" is split because "delete" and "file" are words of other summaries.
    ops = [op("operations_deletefile", "POST", "/operations/deletefile", "Remove a single path"),
           op("operations_copyfile", "POST", "/operations/copyfile", "Copy a file"),
           op("operations_purge", "POST", "/operations/purge", "Delete a directory")]
    assert first(ops, "delete one file") == "operations_deletefile"


def test_synonyms_reach_the_words_specs_use_and_stop_words_do_not_match() -> None:
    ops = [op("fetch_balance", "GET", "/Balance.json", "Fetch the balance for an account"),
           op("fetch_account", "GET", "/Accounts/{Sid}.json", "Fetch an account"),
           op("delete_key", "DELETE", "/Keys/{Sid}.json", "Delete a key you no longer need")]
    assert first(ops, "how much credit is left on the account") == "fetch_balance"
    assert tokenize("no longer still currently") == []


def test_the_order_is_deterministic_and_limited() -> None:
    index = SearchIndex(CALLS)
    once = index.search("call", limit=4)
    assert len(once) == 4 and index.search("call", limit=4) == once
    assert index.search("", limit=4) == [] and index.search("call", limit=0) == []


def test_a_word_pair_counts_in_either_order() -> None:
    # Both names are covered and both summaries say "repository"; "issues of a repository" is
    # the pair "repository issues" of the second summary only (in the other order).
    ops = [op("issues_list", "GET", "/issues", "List issues assigned to you in any repository"),
           op("issues_list_for_repo", "GET", "/repos/{owner}/{repo}/issues",
              "List repository issues"),
           op("repos_list", "GET", "/repos", "List repositories")]
    assert first(ops, "list the issues of a repository") == "issues_list_for_repo"


def test_undoing_an_action_does_not_ask_for_that_action() -> None:
    ops = [op("delete_dialog", "DELETE", "/dialogs/{id}", "Deletes a dialog"),
           op("restore_dialog", "POST", "/dialogs/{id}/actions/restore",
              "Restores a deleted dialog"),
           op("get_dialog", "GET", "/dialogs/{id}", "Gets a single dialog")]
    assert first(ops, "undo the delete of a dialog") == "restore_dialog"
    assert first(ops, "delete a dialog") == "delete_dialog"


def test_undoing_is_an_action_of_its_own() -> None:
    # "bring back" asks for the un- operation, not the one named by the word after it.
    ops = [op("admin_suspend_user", "PUT", "/users/{name}/suspended", "Suspend a user"),
           op("admin_unsuspend_user", "DELETE", "/users/{name}/suspended", "Unsuspend a user"),
           op("admin_create_user", "POST", "/admin/users", "Create a user")]
    assert first(ops, "bring back a suspended user") == "admin_unsuspend_user"
    assert first(ops, "suspend a user") == "admin_suspend_user"
    assert not _undo_asked("back up a file") and _undo_asked("roll back the release")


def test_the_query_head_noun_is_the_end_of_its_first_noun_phrase() -> None:
    assert _query_head("set up a new verification service for our login flow") == "servic"
    assert _query_head("hang up a call that is still in progress") == "call"


def test_a_name_of_method_and_path_says_no_more_than_its_method() -> None:
    # Stripe-style names: a POST to one item changes it, a POST to the list adds one.
    ops = [op("post_widgets", "POST", "/v1/widgets", "Widgets"),
           op("post_widgets_widget", "POST", "/v1/widgets/{widget}", "Widgets"),
           op("get_widgets", "GET", "/v1/widgets", "Widgets"),
           op("get_widgets_widget", "GET", "/v1/widgets/{widget}", "Widgets")]
    assert first(ops, "change a widget") == "post_widgets_widget"
    assert first(ops, "add a widget") == "post_widgets"
    assert first(ops, "list the widgets") == "get_widgets"
    assert first(ops, "show this widget") == "get_widgets_widget"


def test_an_operation_named_by_its_own_verb_does_what_that_verb_asks() -> None:
    ops = [op("get_widget", "GET", "/widgets/{id}", "Widgets"),
           op("auth_revoke", "GET", "/auth.revoke", "Widgets"),
           op("auth_test", "GET", "/auth.test", "Widgets")]
    # "invalidate" asks for a delete; a GET named "revoke" does one (RPC-style APIs).
    assert first(ops, "invalidate the auth") == "auth_revoke"


def test_a_query_about_one_item_prefers_the_operation_on_one() -> None:
    ops = [op("list_holds", "GET", "/holds", "Legal holds"),
           op("get_hold", "GET", "/holds/{id}", "Legal holds")]
    assert first(ops, "what does this legal hold cover") == "get_hold"
    assert first(ops, "every legal hold we have") == "list_holds"
    assert first(ops, "a legal hold by id") == "get_hold"


def test_a_clause_after_without_is_not_asked_for() -> None:
    ops = [op("delete_account", "DELETE", "/accounts/{id}", "Delete an account"),
           op("disable_account", "POST", "/accounts/{id}/disable", "Disable an account")]
    assert first(ops, "switch off an account without deleting it") == "disable_account"


def test_a_later_past_form_is_not_the_query_verb() -> None:
    ops = [op("chat_post_message", "POST", "/chat.postMessage", "Sends a message"),
           op("chat_update", "POST", "/chat.update", "Updates a message")]
    assert first(ops, "fix a typo in a message the bot already posted") == "chat_update"


def test_markup_and_split_acronyms_do_not_become_terms() -> None:
    ops = [op("get_gadget", "GET", "/gadgets/{id}",
              '<p>Retrieves a <a href="/docs/api#gadgets">gadget</a>.</p>'),
           op("reserved_i_ps_create", "POST", "/reserved_ips", "Create a reserved IP")]
    assert SearchIndex(ops).search("docs href", limit=3) == []
    assert first(ops, "reserve an IPs block") == "reserved_i_ps_create"
    assert tokenize("reserved_i_ps") == ["reserv", "ip"] == tokenize("reserved IP")


def test_everyday_words_reach_the_words_specs_use() -> None:
    # "hang up" reaches "terminates", "spend" reaches "usage" (the vocabulary table).
    assert first(CALLS, "hang up a call") == "update_call"
    ops = [op("list_message", "GET", "/Messages.json", "Retrieve messages"),
           op("list_usage_record", "GET", "/Usage/Records.json", "Retrieve usage records"),
           op("list_notification", "GET", "/Notifications.json", "Retrieve notifications")]
    assert first(ops, "how much did we spend on messages") == "list_message"
    assert first(ops, "how much did we spend this month") == "list_usage_record"


# Round 4 (docs/search-quality.md): multi-word verbs, on / off, questions and noun phrases, halves.
WIDGETS = [
    op("list_widgets", "GET", "/widgets", "List widgets"),
    op("get_widget", "GET", "/widgets/{id}", "Get a widget"),
    op("create_widget", "POST", "/widgets", "Create a widget"),
    op("delete_widget", "DELETE", "/widgets/{id}", "Delete a widget"),
    op("enable_widget_sync", "PUT", "/widgets/{id}/sync", "Enable widget sync"),
    op("disable_widget_sync", "DELETE", "/widgets/{id}/sync", "Disable widget sync"),
    op("check_widget_sync", "GET", "/widgets/{id}/sync", "Check if widget sync is enabled"),
]


def test_multi_word_verbs_are_read_as_one_verb() -> None:
    assert first(WIDGETS, "get rid of a widget") == "delete_widget"
    assert first(WIDGETS, "tear down a widget") == "delete_widget"
    assert first(WIDGETS, "set up a widget") == "create_widget"


def test_turning_on_and_off_are_opposites() -> None:
    assert first(WIDGETS, "turn off widget sync") == "disable_widget_sync"
    assert first(WIDGETS, "turn on widget sync") == "enable_widget_sync"
    assert first(WIDGETS, "deactivate widget sync") == "disable_widget_sync"


def test_a_question_or_a_noun_phrase_asks_for_a_read() -> None:
    assert first(WIDGETS, "is widget sync on for this one") == "check_widget_sync"
    assert first(WIDGETS, "widgets our team owns") == "list_widgets"
    assert first(WIDGETS, "the widgets of our team") == "list_widgets"


def test_a_run_together_name_word_is_covered_by_its_halves() -> None:
    ops = [op("star_repo", "PUT", "/user/starred/{repo}", "Star a repository"),
           op("unstar_repo", "DELETE", "/user/starred/{repo}", "Unstar a repository"),
           op("list_stargazers", "GET", "/repos/{repo}/stargazers", "List stargazers")]
    assert first(ops, "take my star off a repository") == "unstar_repo"
    assert first(ops, "remove my star from a repository") == "unstar_repo"


def test_table_words_are_found_under_their_base_form() -> None:
    from gateway.catalog.search import _expansions, _stem
    assert "subscription" in _expansions("subscribed", _stem("subscribed"))
    assert tokenize("publicly locally") == ["public", "local"]

"""The Chat tab: the user's conversations, streaming answers with Stop, regenerate and
edit (both make branches in the message tree, nothing is overwritten), moving between
sibling answers, and thumbs with reasons and a comment.

The page's API (through `gradio_client`): /send, /stop, /regenerate, /edit (streaming, on
the session's open conversation), /new_conversation, /rate, /open_conversation,
/rename_conversation, /delete_conversation, /restore_conversation (by conversation id).
Moving between siblings is the page's alone: /open_conversation gives a program the branch.
"""

import json
import logging
from dataclasses import dataclass
from typing import TypedDict

import gradio as gr

from assistant.chat import Turn
from assistant.inference import GenerationParams, RequestError
from storage import chat as store
from storage import open_db

log = logging.getLogger("flywheel.ui")

UP_REASONS = ["accurate", "followed instructions", "clear", "helpful tone"]
CONVERSATIONS_SHOWN = 200  # the most recently active; older ones are kept, not listed
DOWN_REASONS = ["wrong", "didn't follow instructions", "refused wrongly", "too long", "unsafe",
                "other"]


class ChatSession(TypedDict):
    """What the page keeps for one browser tab between two events (in a gr.State)."""
    conversation_id: str | None  # the conversation on screen; None: a new chat
    leaf_id: str | None          # the last message of the branch on screen
    ids: list[str]               # the stored id of each message shown, in order
    selected: str | None         # the message clicked in the chat, for branching and rating


def _new_session() -> ChatSession:
    return {"conversation_id": None, "leaf_id": None, "ids": [], "selected": None}


def _branch(page, leaf_id: str | None) -> tuple[list[dict], list[str]]:
    """The chat from its first turn down to `leaf_id`, as the Chatbot shows it."""
    if leaf_id is None:
        return [], []
    with open_db(page.home) as db:
        path = [m for m in store.thread(db, leaf_id) if m["role"] != "system"]
    return [{"role": m["role"], "content": m["content"]} for m in path], [m["id"] for m in path]


def _last(turn: Turn) -> dict:
    result = turn.result
    return {"conversation_id": turn.conversation_id, "message_id": turn.id,
            "adapter_id": result.adapter_id if result else turn.adapter_id,
            "finish_reason": result.finish_reason if result else None}


def _conversations(page, user: dict, selected: str | None = None, search: str = "",
                   held: dict | None = None) -> tuple[gr.Radio, dict]:
    """The user's conversations, newest activity first, that hold `search` in the title or a
    message: the first page, or the next one after those `held` (the list grows a page at a
    time). Returns the list and what it holds now (its search, its choices, where the next
    page starts)."""
    after = held["next"] if held else None
    with open_db(page.home) as db:
        listed = store.list_conversations(db, user["id"], limit=CONVERSATIONS_SHOWN,
                                          after=after, search=search)
    choices = [*(tuple(c) for c in (held or {}).get("shown", [])),
               *((r["title"] or "Untitled", r["id"]) for r in listed.rows)]
    if selected not in [id_ for _, id_ in choices]:
        selected = None
    label = ("Your conversations" if choices or not search
             else "No conversation holds those words")
    return (gr.Radio(choices=choices, value=selected, label=label),
            {"search": search, "shown": choices, "next": listed.next})


def _feedback(page, user: dict, ids: list[str], history: list[dict]) -> list[str | None]:
    """The caller's saved thumbs on each answer shown, as the Chatbot's `feedback_value`."""
    with open_db(page.home) as db:
        mine = store.own_ratings(db, ids, user["id"])
    marks = {"up": "Like", "down": "Dislike"}
    return [marks.get(mine.get(i)) for i, m in zip(ids, history) if m["role"] == "assistant"]


@dataclass
class _Streaming:
    """An answer streaming to one page (by session hash)."""
    turn: Turn
    session: dict
    user_id: int | None
    position: int               # its index in the chat on screen
    thumb: str | None = None    # 'up'/'down' clicked while it streams, saved once stored


def build(page, demo: gr.Blocks) -> None:
    running: dict[str, _Streaming] = {}  # session hash -> the answer streaming there

    # ---- the page's API (gradio_client); the page's own events wrap these further down --
    def stream(turn: Turn, session: dict, history: list, user: dict, request: gr.Request):
        """Show the answer as it grows; afterwards the branch ends at the stored answer."""
        session = {**session, "conversation_id": turn.conversation_id, "selected": None}
        history = history + [{"role": "assistant", "content": ""}]
        entry = running[request.session_hash] = _Streaming(turn, session, user["id"],
                                                           len(history) - 1)
        yield history, session, "", {}  # the question shows at once, before the first token
        try:
            for piece in turn:
                history[-1]["content"] += piece
                yield history, session, "", {}
        except RequestError as exc:  # e.g. vLLM went away mid-answer: say what happened
            raise gr.Error(f"The model could not finish: {exc}") from None
        except Exception as exc:
            log.exception("chat failed")
            raise gr.Error(f"The model could not answer: {type(exc).__name__}") from None
        finally:
            turn.cancel()  # a no-op when finished; a closed page or Stop stops the model
            running.pop(request.session_hash, None)
        if entry.thumb:  # 👍/👎 clicked while it streamed
            rate(turn.id, entry.thumb, request=request)
        history, ids = _branch(page, turn.id)
        yield history, {**session, "leaf_id": turn.id, "ids": ids}, "", _last(turn)

    def params(temperature, max_tokens) -> GenerationParams:
        return GenerationParams(temperature=float(temperature), max_tokens=int(max_tokens))

    def send(text: str, session: dict, system_prompt: str, temperature: float, max_tokens: int,
             request: gr.Request):
        """Send a message in the open conversation (or a new one) and stream the answer."""
        user = page.user(request)
        text = (text or "").strip()
        if not text:
            raise gr.Error("Type a message first.")
        session = dict(session or _new_session())
        if session["conversation_id"]:
            page.own_conversation(user, session["conversation_id"])
        try:
            turn = page.service.reply(session["conversation_id"], session["leaf_id"], text,
                                      params(temperature, max_tokens), user_id=user["id"],
                                      system_prompt=system_prompt)
        except RequestError as exc:
            raise _refusal(exc) from None
        history, _ = _branch(page, session["leaf_id"])
        yield from stream(turn, session, history + [{"role": "user", "content": text}], user,
                          request)

    def stop(session: dict, request: gr.Request):
        """Stop this session's answer within one token; the partial answer is kept."""
        user = page.user(request)
        entry = running.get(request.session_hash)
        if entry is None or entry.user_id != user["id"]:  # only your own (a hash can leak)
            history, _ = _branch(page, session["leaf_id"])
            return history, session, {}
        running.pop(request.session_hash, None)
        turn, session = entry.turn, entry.session
        turn.cancel()
        turn.wait(timeout=30)
        history, ids = _branch(page, turn.id)
        return history, {**session, "leaf_id": turn.id, "ids": ids}, _last(turn)

    def regenerate(session: dict, temperature: float, max_tokens: int, request: gr.Request):
        """A new answer to the selected answer's question (default: the last answer's),
        kept beside the earlier one as a sibling. A question left without an answer (the
        server stopped while answering it) gets its answer."""
        user = page.user(request)
        target = session.get("selected") or (session["ids"][-1] if session["ids"] else None)
        if target is None:
            raise gr.Error("Nothing to regenerate yet: send a message first.")
        message = page.own_message(user, target)
        question = message["parent_id"] if message["role"] == "assistant" else message["id"]
        try:
            turn = page.service.regenerate(question, params(temperature, max_tokens),
                                           user_id=user["id"])
        except RequestError as exc:
            raise _refusal(exc) from None
        history, _ = _branch(page, question)
        yield from stream(turn, session, history, user, request)

    def edit(text: str, session: dict, temperature: float, max_tokens: int,
             request: gr.Request):
        """Send a changed version of the selected user message: a new branch from there."""
        user = page.user(request)
        if not session.get("selected"):
            raise gr.Error("Select one of your messages in the chat first.")
        original = page.own_message(user, session["selected"])
        text = (text or "").strip()
        if original["role"] != "user" or not text:
            raise gr.Error("Select one of your messages and write its new text.")
        try:
            turn = page.service.reply(original["conversation_id"], original["parent_id"], text,
                                      params(temperature, max_tokens), user_id=user["id"])
        except RequestError as exc:
            raise _refusal(exc) from None
        history, _ = _branch(page, original["parent_id"])
        yield from stream(turn, session, history + [{"role": "user", "content": text}], user,
                          request)

    def rate(message_id: str, rating: str, reasons: list[str] | None = None,
             comment: str | None = None, request: gr.Request = None) -> str:
        """Rate an answer 'up' or 'down' by its message id, with optional reasons and a
        comment; a later rating replaces it."""
        user = page.user(request)
        if page.own_message(user, message_id, curators_too=True)["role"] != "assistant":
            raise gr.Error("Only answers can be rated.")
        allowed = UP_REASONS if rating == "up" else DOWN_REASONS
        if any(r not in allowed for r in reasons or []):
            raise gr.Error(f"Reasons for '{rating}' are: {', '.join(allowed)}.")
        try:
            page.service.check_feedback(comment=comment)
            with open_db(page.home) as db:
                store.record_feedback(db, message_id, rating, reasons=reasons or [],
                                      comment=(comment or "").strip() or None,
                                      rater_id=user["id"])
        except (KeyError, ValueError) as exc:  # RequestError is a ValueError
            raise gr.Error(str(exc)) from None
        return "ok"

    def new_conversation(request: gr.Request):
        user = page.user(request)
        return [], _new_session(), {}, _conversations(page, user)[0], ""

    def show_conversation(conversation_id: str, request: gr.Request):
        """Show a conversation of yours, at its most recent branch."""
        user = page.user(request)
        if not conversation_id:
            return [], _new_session(), ""
        conversation = page.own_conversation(user, conversation_id)
        with open_db(page.home) as db:
            last = store.last_message(db, conversation_id)
        history, ids = _branch(page, last)
        session = {**_new_session(), "conversation_id": conversation_id, "leaf_id": last,
                   "ids": ids}
        return history, session, conversation["system_prompt"] or ""

    def read_conversation(conversation_id: str, request: gr.Request) -> list[dict]:
        """The messages of one of your conversations, on its most recent branch."""
        return show_conversation(conversation_id, request)[0]

    def rename_conversation(conversation_id: str, title: str, request: gr.Request) -> str:
        """Give one of your conversations a new title."""
        user = page.user(request)
        page.own_conversation(user, conversation_id)
        try:
            with open_db(page.home) as db:
                store.update_conversation(db, conversation_id, title=title or "")
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return "ok"

    def delete_conversation(conversation_id: str, request: gr.Request) -> str:
        """Delete one of your conversations: gone from your list, the review queue and
        training (see storage.chat.delete_conversation); undo with /restore_conversation."""
        user = page.user(request)
        page.own_conversation(user, conversation_id)
        with open_db(page.home) as db:
            store.delete_conversation(db, conversation_id)
        return "ok"

    def restore_conversation(conversation_id: str, request: gr.Request) -> str:
        """Undo the delete of one of your conversations (until the nightly prune)."""
        user = page.user(request)
        with open_db(page.home) as db:
            if not store.restore_conversation(db, conversation_id or "", user["id"]):
                raise gr.Error("Nothing to undo: that conversation is not in your deleted ones.")
        return "ok"

    # ---- the page's own events ---------------------------------------------------------------
    # They return {component: value}, so each says only what it changes. A person's mistake
    # (an empty box, nothing to regenerate, an empty title) is a line beside what caused it:
    # a gr.Error would cover the chat and the message box with "Error" badges until dismissed.
    # The rating form belongs to one answer: whatever changes the answer in view empties it,
    # so a judgement can never land on an answer it was not given to.
    def form_for(session: dict, on_answer: bool = True) -> dict:
        target = _rating_target(session) if on_answer else None
        return {thumb: None, reasons: gr.CheckboxGroup(choices=UP_REASONS + DOWN_REASONS,
                                                       value=[]),
                comment: "", rate_note: "", form_target: target,
                regen_btn: gr.Button(interactive=bool(session.get("ids"))),
                rename_btn: gr.Button(interactive=bool(session.get("conversation_id"))),
                delete_btn: gr.Button(interactive=bool(session.get("conversation_id"))),
                rate_btn: gr.Button(interactive=target is not None)}

    def shown(user: dict, history: list, session: dict) -> gr.Chatbot:
        """The chat with the thumbs you gave, and ‹ 2/3 › on the last answer when it has
        other versions (Gradio shows a message's options under the last answer alone)."""
        ids = session.get("ids", [])
        if history and ids and history[-1]["role"] == "assistant":
            with open_db(page.home) as db:
                versions = store.siblings(db, ids[-1])
            if len(versions) > 1:
                at = versions.index(ids[-1]) + 1
                history = [*history[:-1], {**history[-1], "options": [
                    {"value": "previous", "label": "‹"},
                    {"value": "here", "label": f"{at}/{len(versions)}"},
                    {"value": "next", "label": "›"}]}]
        return gr.Chatbot(value=history, feedback_value=_feedback(page, user, ids, history))

    def page_stream(answers, user: dict, can_retry: bool = False):
        """A streaming handler, for the page: Send is off while it streams. `can_retry`: a
        refusal (busy, rate limited) offers Retry, which sends the box's text again."""
        first = True
        try:
            for history, session, _, last_answer in answers:
                update = {chatbot: history, state: session, last: last_answer}
                if first:  # the box empties once: a draft typed while it streams stays
                    update.update({**form_for({}), box: "", notice: "",
                                   undo_btn: gr.Button(visible=False),
                                   send_btn: gr.Button(interactive=False),
                                   retry_btn: gr.Button(visible=False)})
                    first = False
                yield update
        except gr.Error as exc:  # the draft stays in the box; Retry when a retry can help
            yield {notice: f"⚠️ {exc.message}", send_btn: gr.Button(interactive=True),
                   retry_btn: gr.Button(visible=can_retry and getattr(exc, "retry", False))}
            return
        yield {chatbot: shown(user, history, session), **form_for(session),
               send_btn: gr.Button(interactive=True), open_id: session["conversation_id"],
               **listing(user, session["conversation_id"])}

    def send_in_page(text, session, system_prompt, temperature, max_tokens,
                     request: gr.Request):
        yield from page_stream(send(text, session, system_prompt, temperature, max_tokens,
                                    request), page.user(request), can_retry=True)

    def regenerate_in_page(session, temperature, max_tokens, request: gr.Request):
        yield from page_stream(regenerate(session, temperature, max_tokens, request),
                               page.user(request))

    def edit_in_page(text, session, temperature, max_tokens, request: gr.Request):
        yield from page_stream(edit(text, session, temperature, max_tokens, request),
                               page.user(request))

    def edit_in_place(session, temperature, max_tokens, event: gr.EditData,
                      request: gr.Request):
        """The chat's own edit action on one of your messages: the new text starts a new
        branch from there, as Send edited message does. Refused, the chat shows the branch
        as it was (Gradio has already drawn the new text)."""
        user = page.user(request)
        index = event.index if isinstance(event.index, int) else event.index[0]
        if index >= len(session["ids"]):
            return
        restored = {chatbot: shown(user, _branch(page, session["leaf_id"])[0], session)}
        session = {**session, "selected": session["ids"][index]}
        for update in page_stream(edit(event.value, session, temperature, max_tokens, request),
                                  user):
            yield {**restored, **update} if notice in update and chatbot not in update \
                else update

    def retry_in_page(text, session, system_prompt, temperature, max_tokens,
                      request: gr.Request):
        """Send again the message a refusal left in the box."""
        yield from send_in_page(text, session, system_prompt, temperature, max_tokens, request)

    def stop_in_page(session: dict, request: gr.Request):
        history, session, last_answer = stop(session, request)
        return {chatbot: shown(page.user(request), history, session), state: session,
                last: last_answer, send_btn: gr.Button(interactive=True), **form_for(session)}

    def select(session: dict, event: gr.SelectData, request: gr.Request):
        """Clicking a message selects it: for branching, moving between siblings, rating."""
        user = page.user(request)
        if request.session_hash in running:  # the page's ids are the branch before it
            return {where: "Wait for the answer to finish, then click a message."}
        index = event.index if isinstance(event.index, int) else event.index[0]
        if not session["ids"] or index >= len(session["ids"]):
            return {}
        message = page.own_message(user, session["ids"][index])
        session = {**session, "selected": message["id"]}
        return {state: session, where: _where(message),
                **form_for(session, on_answer=message["role"] == "assistant"),
                edit_box: message["content"] if message["role"] == "user" else ""}

    def _where(message: dict) -> str:
        with open_db(page.home) as db:
            ids = store.siblings(db, message["id"])
        kind = "answer" if message["role"] == "assistant" else "message"
        return f"Selected {kind} {ids.index(message['id']) + 1} of {len(ids)}"

    def move(session: dict, step: int, request: gr.Request):
        """Show the previous / next sibling of the selected message, and its branch."""
        user = page.user(request)
        if not session.get("selected"):
            return {where: "Click a message in the chat first, then move between its versions."}
        message = page.own_message(user, session["selected"])
        with open_db(page.home) as db:
            ids = store.siblings(db, message["id"])
            target = ids[max(0, min(len(ids) - 1, ids.index(message["id"]) + step))]
            leaf = store.latest_leaf(db, target)
            target_row = store.get_message(db, target)
        history, ids_shown = _branch(page, leaf)
        session = {**session, "leaf_id": leaf, "ids": ids_shown, "selected": target}
        return {chatbot: shown(user, history, session), state: session,
                where: _where(target_row),
                **form_for(session, on_answer=target_row["role"] == "assistant")}

    def version_option(session: dict, event: gr.SelectData, request: gr.Request):
        """‹ or › on the last answer: its previous or next version."""
        step = {"previous": -1, "next": 1}.get(event.value)
        if step is None or not session.get("ids"):
            return {}
        return move({**session, "selected": session["ids"][-1]}, step, request)

    def previous_sibling(session: dict, request: gr.Request):
        return move(session, -1, request)

    def next_sibling(session: dict, request: gr.Request):
        return move(session, 1, request)

    def save_rating(session, target, chosen, picked_reasons, text, request: gr.Request):
        """Save the form onto the answer it was opened for (`form_target`)."""
        if not target:
            return {rate_note: "Send a message first: there is no answer to rate."}
        if not chosen:
            return {rate_note: "Choose 👍 or 👎 first."}
        try:
            rate(target, chosen, picked_reasons, text, request)
        except gr.Error as exc:
            return {rate_note: f"⚠️ {exc.message}"}
        user = page.user(request)
        history, _ = _branch(page, session["leaf_id"])
        return {rate_note: f"Saved: {'👍' if chosen == 'up' else '👎'} "
                           f"{', '.join(picked_reasons or [])}".strip(),
                chatbot: shown(user, history, session)}

    def on_like(session: dict, data: gr.LikeData, request: gr.Request):
        """A thumb on the message itself: saved at once, or when a streaming answer is stored;
        it opens the reasons and comment for that answer."""
        ids = (session or {}).get("ids", [])
        if data.liked not in (True, False):  # a thumb clicked again: Gradio unselects it
            return {notice: "Your rating stays; choose the other thumb to change it."}
        rating = "up" if data.liked else "down"
        entry = running.get(request.session_hash)
        if entry is not None and entry.user_id == page.user(request)["id"]:
            # While an answer streams, the ids on the page are the branch shown before it (a
            # regenerated answer sits where its sibling was): only the streaming one is rated.
            if data.index != entry.position:
                return {notice: "Rate it when the answer on screen has finished."}
            entry.thumb = rating
            return {rate_note: "Saved when the answer is finished."}
        if not isinstance(data.index, int) or data.index >= len(ids):
            return {notice: "That answer is not stored yet; rate it when it has finished."}
        rate(ids[data.index], rating, request=request)
        target = ids[data.index]
        choices = UP_REASONS if rating == "up" else DOWN_REASONS
        # The reasons and comment open on the answer itself (page_keys.js); the panel below
        # holds the same form, for the keyboard and for answers rated earlier.
        return {**form_for({**session, "selected": target}), thumb: rating,
                reasons: gr.CheckboxGroup(choices, value=[]),
                rate_note: f"Saved {'👍' if rating == 'up' else '👎'}: add reasons or a comment?"}

    def new_in_page(request: gr.Request):
        user = page.user(request)
        session = _new_session()
        return {chatbot: [], state: session, last: {}, system: "", notice: "", open_id: None,
                undo_btn: gr.Button(visible=False), **listing(user), **form_for(session)}

    def open_in_page(conversation_id: str, request: gr.Request):
        user = page.user(request)
        try:
            history, session, system_prompt = show_conversation(conversation_id, request)
        except gr.Error:  # deleted meanwhile, or a stale id kept by the browser
            return {**new_in_page(request), open_id: None}
        # The list stays as it is (a search's results too), with this one marked.
        return {chatbot: shown(user, history, session), state: session, system: system_prompt,
                notice: "", open_id: session["conversation_id"], **form_for(session),
                conversations: gr.Radio(value=session["conversation_id"]),
                undo_btn: gr.Button(visible=False)}

    def rename_in_page(session: dict, title: str, request: gr.Request,
                       conversation_id: str | None = None):
        """Rename the open conversation (the Rename button), or `conversation_id`."""
        conversation_id = conversation_id or session.get("conversation_id")
        if not conversation_id:
            return {title_note: "Open a conversation first."}
        if not (title or "").strip():
            return {title_note: "Write the new title first."}
        try:
            rename_conversation(conversation_id, title, request)
        except gr.Error as exc:
            return {title_note: f"⚠️ {exc.message}"}
        user = page.user(request)
        return {**listing(user, session.get("conversation_id")), title_box: "",
                title_note: ""}

    def rate_inline(asked: str, session: dict, request: gr.Request):
        """Reasons and a comment given on the answer itself, after its thumb (page_keys.js
        writes {"place", "rating", "reasons", "comment"} as JSON)."""
        try:
            wanted = json.loads(asked)
            place, rating = int(wanted["place"]), wanted["rating"]
            picked = [str(reason) for reason in wanted.get("reasons", [])]
            comment = str(wanted.get("comment", ""))
        except (ValueError, KeyError, TypeError):
            return {}
        answer = _answer_at(session, place)
        if answer is None or rating not in ("up", "down"):
            saved = {rate_note: "That answer is not on screen any more."}
        else:
            saved = save_rating(session, answer, rating, picked, comment, request)
        # The form on the answer shows this reply (tagged with its ask, so that the same
        # reply twice is still news to it).
        return {**saved, rating_reply: f"{wanted.get('at')}\t{saved[rate_note]}"}

    def rename_listed(asked: str, session: dict, request: gr.Request):
        """A title edited in place in the list: page_keys.js writes "<id>\t<time>\t<title>"
        (the time, so that the same title asked twice is two asks)."""
        conversation_id, _, rest = (asked or "").partition("\t")
        if not conversation_id:
            return {}
        return rename_in_page(session, rest.partition("\t")[2], request, conversation_id)

    def delete_in_page(session: dict, request: gr.Request):
        if not session.get("conversation_id"):
            return {title_note: "Open a conversation first."}
        try:
            delete_conversation(session["conversation_id"], request)
        except gr.Error as exc:  # already deleted (a second click, another tab)
            return {title_note: f"⚠️ {exc.message}"}
        return {**new_in_page(request), deleted: session["conversation_id"],
                notice: "Conversation deleted.", undo_btn: gr.Button(visible=True)}

    def undo_in_page(conversation_id: str, request: gr.Request):
        try:
            restore_conversation(conversation_id, request)
        except gr.Error as exc:
            return {notice: f"⚠️ {exc.message}", undo_btn: gr.Button(visible=False)}
        return {**open_in_page(conversation_id, request),
                **listing(page.user(request), conversation_id)}

    def save_system_prompt(session: dict, system_prompt: str, request: gr.Request) -> str:
        user = page.user(request)
        if not session.get("conversation_id"):
            return "Used when you send the first message."
        page.own_conversation(user, session["conversation_id"])
        with open_db(page.home) as db:
            store.update_conversation(db, session["conversation_id"],
                                      system_prompt=system_prompt or "")
        return "Saved: it applies to the next answers."

    def _answer_at(session: dict, place: int) -> str | None:
        """The id of the answer at `place` among the answers on screen (the page's script
        names an answer by its place), or None when there is no such answer any more."""
        with open_db(page.home) as db:
            details = store.answer_details(db, session.get("ids") or [])
        return details[place]["id"] if 0 <= place < len(details) else None

    def answer_details(session: dict, request: gr.Request) -> str:
        """Each answer shown, as JSON for the page's script (page_keys.js): its place among
        its versions (`at` of `of`, drawn as ‹ 2/3 › on it) and, for curators and admins,
        the version that wrote it (its hover title)."""
        curator = page.user(request)["role"] in ("curator", "admin")
        with open_db(page.home) as db:
            details = store.answer_details(db, session.get("ids") or [])
        return json.dumps([{"at": d["at"], "of": d["of"],
                            **({"version": d["version"]} if curator else {})}
                           for d in details])

    def move_answer(asked: str, session: dict, request: gr.Request):
        """‹ or › on an answer before the last (page_keys.js writes "<its place>:<step>")."""
        try:
            place, step = (int(part) for part in asked.split(":")[:2])
        except ValueError:
            return {}
        answer = _answer_at(session, place)
        if answer is None or step not in (-1, 1):
            return {}
        return move({**session, "selected": answer}, step, request)

    def on_load(conversation_id: str | None, request: gr.Request):
        """The list of conversations, and the one open before a reload (kept by the browser)."""
        user = page.user(request)
        if conversation_id:
            opened = open_in_page(conversation_id, request)
            return {**opened, **listing(user, opened[state]["conversation_id"])}
        return listing(user)

    def list_view(user: dict, selected: str | None = None, search: str = "",
                  held: dict | None = None) -> dict:
        """The list (`_conversations`), what it holds, and Older while there is more."""
        radio, held = _conversations(page, user, selected, search=search, held=held)
        return {conversations: radio, held_list: held,
                more_btn: gr.Button(visible=bool(held["next"]))}

    def listing(user: dict, selected: str | None = None) -> dict:
        """The list from its first page, unfiltered (a new message reorders it)."""
        return {**list_view(user, selected), find: ""}

    def search_in_page(words: str, session: dict, request: gr.Request):
        return list_view(page.user(request), session.get("conversation_id"),
                         search=words.strip())

    def more_in_page(held: dict, session: dict, request: gr.Request):
        if not held.get("next"):
            return {more_btn: gr.Button(visible=False)}
        return list_view(page.user(request), session.get("conversation_id"),
                         search=held["search"], held=held)

    # ---- layout ---------------------------------------------------------------------------
    state = gr.State(_new_session())
    form_target = gr.State(None)  # the answer the rating form is for
    deleted = gr.State(None)      # the conversation Undo brings back
    held_list = gr.State({})      # what the conversation list holds: search, choices, next page
    open_id = gr.BrowserState(None, storage_key="flywheel-open-conversation",
                              secret=page.home.page_secret())
    with gr.Row():
        with gr.Column(scale=1, min_width=220, elem_id="sidebar"), gr.Accordion(
                "Your conversations", open=True, elem_id="conversation-fold"):
            # On a phone the fold starts closed (the js of demo.load below), after the chat.
            new_btn = gr.Button("+ New chat", elem_id="new-chat")
            find = gr.Textbox(label="Search your conversations",
                              placeholder="Words of a title or a message",
                              elem_id="find-conversation", max_length=200)
            conversations = gr.Radio(label="Your conversations", choices=[],
                                     elem_id="conversations")
            more_btn = gr.Button(f"Older conversations ({CONVERSATIONS_SHOWN} more)", size="sm",
                                 visible=False, elem_id="more-conversations")
            title_box = gr.Textbox(placeholder="New title", label="Title of this conversation",
                                   elem_id="title")
            title_note = gr.Markdown(elem_id="title-note")
            with gr.Row():
                rename_btn = gr.Button("Rename", size="sm", elem_id="rename", interactive=False)
                delete_btn = gr.Button("Delete", size="sm", variant="stop", elem_id="delete-chat",
                                       interactive=False)
        with gr.Column(scale=4, elem_id="chat-column"):
            with gr.Accordion("System prompt", open=False):
                system = gr.Textbox(placeholder="e.g. You are a concise assistant.",
                                    label="System prompt", lines=2, elem_id="system-prompt")
                system_btn = gr.Button("Save system prompt", size="sm")
                system_note = gr.Markdown()
            chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot",
                                 buttons=["copy", "copy_all"], editable="user")
            with gr.Row():
                box = gr.Textbox(placeholder="Message Flywheel…", label="Message", scale=8,
                                 autofocus=True, elem_id="message")
                send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                stop_btn = gr.Button("Stop", scale=1, elem_id="stop")
            with gr.Row():
                notice = gr.Markdown(elem_id="chat-notice")
                undo_btn = gr.Button("Undo", size="sm", visible=False, elem_id="undo-delete")
                retry_btn = gr.Button("Retry", size="sm", visible=False, elem_id="retry")
            with gr.Row():
                regen_btn = gr.Button("↻ Regenerate", size="sm", elem_id="regenerate",
                                      interactive=False)
                prev_btn = gr.Button("◀ Previous version", size="sm", elem_id="prev-sibling")
                where = gr.Markdown("Click a message to select it.", elem_id="selected")
                next_btn = gr.Button("Next version ▶", size="sm", elem_id="next-sibling")
            with gr.Accordion("Rate or edit the selected message", open=False,
                              elem_id="panel") as panel:
                with gr.Row():
                    thumb = gr.Radio([("👍", "up"), ("👎", "down")], label="Rating",
                                     elem_id="thumb")
                    reasons = gr.CheckboxGroup(UP_REASONS + DOWN_REASONS, label="Reasons",
                                               elem_id="reasons")
                comment = gr.Textbox(label="Comment (optional)", elem_id="comment")
                rate_btn = gr.Button("Save rating", size="sm", elem_id="save-rating",
                                     interactive=False)
                rate_note = gr.Markdown(elem_id="rating-status")
                edit_box = gr.Textbox(label="Edit your message (starts a new branch)",
                                      elem_id="edit-box")
                edit_btn = gr.Button("Send edited message", size="sm", elem_id="edit-send")
            with gr.Accordion("Settings", open=False):
                defaults = GenerationParams()  # one place for the defaults: the engine's
                temperature = gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05,
                                        label="Temperature", elem_id="temperature")
                max_tokens = gr.Slider(16, 1024, value=defaults.max_tokens, step=16,
                                       label="Max new tokens", elem_id="max-tokens")
            last = gr.JSON(visible=False, label="Last answer")
            # For page_keys.js, which draws ‹ 2/3 › on every earlier answer (Gradio draws a
            # message's options on the last one alone) and the version as a hover title:
            # what each answer shows, and the box its ‹ › clicks write to.
            details = gr.Textbox(elem_id="answer-details", elem_classes=["page-data"],
                                 show_label=False, container=False)
            move_box = gr.Textbox(elem_id="answer-move", elem_classes=["page-data"],
                                  show_label=False, container=False)
            # Reasons and a comment given on an answer (page_keys.js) arrive here.
            rating_box = gr.Textbox(elem_id="rating-request", elem_classes=["page-data"],
                                    show_label=False, container=False)
            rating_reply = gr.Textbox(elem_id="rating-reply", elem_classes=["page-data"],
                                      show_label=False, container=False)
            # A title edited in place in the list (page_keys.js) arrives here.
            rename_box = gr.Textbox(elem_id="rename-request", elem_classes=["page-data"],
                                    show_label=False, container=False)
            # The API's streaming endpoints keep their own outputs and raise errors (what a
            # program wants); the page's buttons run the page's versions above.
            with gr.Row(visible=False):
                api_send, api_regenerate, api_edit, api_stop, api_new = (
                    gr.Button(visible=False) for _ in range(5))

    # ---- events ---------------------------------------------------------------------------
    knobs = [temperature, max_tokens]
    # Progress shows on the chat alone: on the other outputs (the form, the buttons) Gradio's
    # overlay would sit over them while an answer streams.
    page_event = dict(api_visibility="private", show_progress_on=[chatbot])
    form = [thumb, reasons, comment, rate_note, form_target, regen_btn, rename_btn, delete_btn,
            rate_btn]
    viewed = [chatbot, state, box, last, notice, undo_btn, send_btn, retry_btn, open_id,
              conversations, held_list, find, more_btn, *form]
    send_btn.click(send_in_page, [box, state, system, *knobs], viewed, **page_event)
    box.submit(send_in_page, [box, state, system, *knobs], viewed, **page_event)
    regen_btn.click(regenerate_in_page, [state, *knobs], viewed, **page_event)
    edit_btn.click(edit_in_page, [edit_box, state, *knobs], viewed, **page_event)
    chatbot.edit(edit_in_place, [state, *knobs], viewed, **page_event)
    retry_btn.click(retry_in_page, [box, state, system, *knobs], viewed, **page_event)
    # Not Gradio's `cancels=`: that cancels by session hash alone, and a hash can leak; `stop`
    # checks that the answer is the caller's, then the answer's own stream ends within a token.
    stop_btn.click(stop_in_page, [state], [chatbot, state, last, send_btn, *form], **page_event)
    chatbot.select(select, [state], [state, where, edit_box, *form], **page_event)
    # A thumb and the reasons given after it queue in one lane, one at a time, in the order
    # they were sent: run side by side, the bare thumb could land last and replace them.
    rating_lane = dict(concurrency_id="ratings", concurrency_limit=1)
    chatbot.like(on_like, [state], [notice, rate_note, panel, *form], **page_event,
                 **rating_lane)
    prev_btn.click(previous_sibling, [state], [chatbot, state, where, *form], **page_event)
    next_btn.click(next_sibling, [state], [chatbot, state, where, *form], **page_event)
    chatbot.option_select(version_option, [state], [chatbot, state, where, *form],
                          **page_event)
    thumb.input(lambda t: gr.CheckboxGroup(choices=UP_REASONS if t == "up" else DOWN_REASONS,
                                           value=[]),
                [thumb], [reasons], api_visibility="private", show_progress="hidden")
    rate_btn.click(save_rating, [state, form_target, thumb, reasons, comment],
                   [rate_note, chatbot], **page_event)
    new_btn.click(new_in_page, None, viewed + [system], **page_event)
    conversations.input(open_in_page, [conversations], viewed + [system], **page_event)
    renamed = [conversations, held_list, find, more_btn, title_box, title_note]
    rename_btn.click(rename_in_page, [state, title_box], renamed, **page_event)
    rename_box.change(rename_listed, [rename_box, state], renamed, **page_event)
    rating_box.change(rate_inline, [rating_box, state], [rate_note, chatbot, rating_reply],
                      **page_event, **rating_lane)
    find.change(search_in_page, [find, state], [conversations, held_list, more_btn],
               trigger_mode="always_last", api_visibility="private", show_progress="hidden")
    more_btn.click(more_in_page, [held_list, state], [conversations, held_list, more_btn],
                   **page_event)
    delete_btn.click(delete_in_page, [state], viewed + [system, deleted, title_note],
                     **page_event)
    undo_btn.click(undo_in_page, [deleted], viewed + [system], **page_event)
    state.change(answer_details, [state], [details], trigger_mode="always_last",
                 api_visibility="private", show_progress="hidden")
    move_box.change(move_answer, [move_box, state], [chatbot, state, where, *form],
                    **page_event)
    system_btn.click(save_system_prompt, [state, system], [system_note],
                     api_visibility="private")
    demo.load(on_load, [open_id], viewed + [system], **page_event)
    # On a phone the conversation list starts folded behind its button, below the chat.
    demo.load(None, js="""() => {
        if (window.matchMedia("(max-width: 640px)").matches)
            document.querySelector("#conversation-fold button")?.click(); }""")

    streamed = [chatbot, state, box, last]
    api_send.click(send, [box, state, system, *knobs], streamed, api_name="send")
    api_regenerate.click(regenerate, [state, *knobs], streamed, api_name="regenerate")
    api_edit.click(edit, [edit_box, state, *knobs], streamed, api_name="edit")
    api_stop.click(stop, [state], [chatbot, state, last], api_name="stop")
    api_new.click(new_conversation, None, [chatbot, state, last, conversations, system],
                  api_name="new_conversation")
    gr.api(rate, api_name="rate")
    gr.api(read_conversation, api_name="open_conversation")
    gr.api(rename_conversation, api_name="rename_conversation")
    gr.api(delete_conversation, api_name="delete_conversation")
    gr.api(restore_conversation, api_name="restore_conversation")


def _rating_target(session: dict) -> str | None:
    """The answer the rating form is for: the selected message if it is an answer, else the
    last answer shown."""
    ids = session.get("ids") or []
    if session.get("selected"):
        return session["selected"]
    return ids[-1] if ids else None


def _refusal(exc: RequestError) -> gr.Error:
    """The engine's or the throttle's refusal as the page's message; busy (503) and rate
    limited (429) are worth a Retry, a too-long message is not (`retry`: read by the page)."""
    error = gr.Error(str(exc))
    error.retry = exc.status in (429, 503)
    return error

"""The Chat tab: the user's conversations, streaming answers with Stop, regenerate and
edit (both make branches in the message tree, nothing is overwritten), moving between
sibling answers, and thumbs with reasons and a comment.

This module is the tab's layout and its wiring; what the events do is in ui_chat_page.py,
and the tab's API (for the page's events and for `gradio_client`) in ui_chat_api.py.
"""

import gradio as gr

from assistant.inference import GenerationParams
from assistant.ui import Page, bind
from assistant.ui_chat_api import (
    CONVERSATIONS_SHOWN,
    DOWN_REASONS,
    UP_REASONS,
    delete_conversation,
    edit,
    new_conversation,
    new_session,
    rate,
    read_conversation,
    regenerate,
    rename_conversation,
    restore_conversation,
    send,
    stop,
)
from assistant.ui_chat_page import (
    ChatView,
    answer_details,
    delete_in_page,
    edit_in_page,
    edit_in_place,
    more_in_page,
    move_answer,
    new_in_page,
    next_sibling,
    on_like,
    on_load,
    open_in_page,
    previous_sibling,
    rate_inline,
    regenerate_in_page,
    rename_in_page,
    rename_listed,
    save_rating,
    save_system_prompt,
    search_in_page,
    select,
    send_in_page,
    stop_in_page,
    undo_in_page,
    version_option,
)


def build(page: Page, demo: gr.Blocks) -> None:
    """The tab's components, then each event wired to its handler."""
    state = gr.State(new_session())
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

    view = ChatView(page=page, state=state, form_target=form_target, deleted=deleted,
                    held_list=held_list, open_id=open_id, find=find,
                    conversations=conversations, more_btn=more_btn, title_box=title_box,
                    title_note=title_note, rename_btn=rename_btn, delete_btn=delete_btn,
                    system=system, chatbot=chatbot, box=box, send_btn=send_btn, notice=notice,
                    undo_btn=undo_btn, retry_btn=retry_btn, regen_btn=regen_btn, where=where,
                    panel=panel, thumb=thumb, reasons=reasons, comment=comment,
                    rate_btn=rate_btn, rate_note=rate_note, edit_box=edit_box, last=last,
                    rating_reply=rating_reply)

    knobs = [temperature, max_tokens]
    # Progress shows on the chat alone: on the other outputs (the form, the buttons) Gradio's
    # overlay would sit over them while an answer streams.
    page_event = dict(api_visibility="private", show_progress_on=[chatbot])
    form = [thumb, reasons, comment, rate_note, form_target, regen_btn, rename_btn, delete_btn,
            rate_btn]
    viewed = [chatbot, state, box, last, notice, undo_btn, send_btn, retry_btn, open_id,
              conversations, held_list, find, more_btn, *form]
    send_btn.click(bind(send_in_page, view), [box, state, system, *knobs], viewed, **page_event)
    box.submit(bind(send_in_page, view), [box, state, system, *knobs], viewed, **page_event)
    regen_btn.click(bind(regenerate_in_page, view), [state, *knobs], viewed, **page_event)
    edit_btn.click(bind(edit_in_page, view), [edit_box, state, *knobs], viewed, **page_event)
    chatbot.edit(bind(edit_in_place, view), [state, *knobs], viewed, **page_event)
    retry_btn.click(bind(send_in_page, view), [box, state, system, *knobs], viewed, **page_event)
    # Not Gradio's `cancels=`: that cancels by session hash alone, and a hash can leak; `stop`
    # checks that the answer is the caller's, then the answer's own stream ends within a token.
    stop_btn.click(bind(stop_in_page, view), [state], [chatbot, state, last, send_btn, *form],
                   **page_event)
    chatbot.select(bind(select, view), [state], [state, where, edit_box, *form], **page_event)
    # A thumb and the reasons given after it queue in one lane, one at a time, in the order
    # they were sent: run side by side, the bare thumb could land last and replace them.
    rating_lane = dict(concurrency_id="ratings", concurrency_limit=1)
    chatbot.like(bind(on_like, view), [state], [notice, rate_note, panel, *form], **page_event,
                 **rating_lane)
    moved = [chatbot, state, where, *form]
    prev_btn.click(bind(previous_sibling, view), [state], moved, **page_event)
    next_btn.click(bind(next_sibling, view), [state], moved, **page_event)
    chatbot.option_select(bind(version_option, view), [state], moved, **page_event)
    thumb.input(lambda t: gr.CheckboxGroup(choices=UP_REASONS if t == "up" else DOWN_REASONS,
                                           value=[]),
                [thumb], [reasons], api_visibility="private", show_progress="hidden")
    rate_btn.click(bind(save_rating, view), [state, form_target, thumb, reasons, comment],
                   [rate_note, chatbot], **page_event)
    new_btn.click(bind(new_in_page, view), None, viewed + [system], **page_event)
    conversations.input(bind(open_in_page, view), [conversations], viewed + [system], **page_event)
    renamed = [conversations, held_list, find, more_btn, title_box, title_note]
    rename_btn.click(bind(rename_in_page, view), [state, title_box], renamed, **page_event)
    rename_box.change(bind(rename_listed, view), [rename_box, state], renamed, **page_event)
    rating_box.change(bind(rate_inline, view), [rating_box, state],
                      [rate_note, chatbot, rating_reply], **page_event, **rating_lane)
    find.change(bind(search_in_page, view), [find, state], [conversations, held_list, more_btn],
               trigger_mode="always_last", api_visibility="private", show_progress="hidden")
    more_btn.click(bind(more_in_page, view), [held_list, state],
                   [conversations, held_list, more_btn], **page_event)
    delete_btn.click(bind(delete_in_page, view), [state], viewed + [system, deleted, title_note],
                     **page_event)
    undo_btn.click(bind(undo_in_page, view), [deleted], viewed + [system], **page_event)
    state.change(bind(answer_details, view), [state], [details], trigger_mode="always_last",
                 api_visibility="private", show_progress="hidden")
    move_box.change(bind(move_answer, view), [move_box, state], [chatbot, state, where, *form],
                    **page_event)
    system_btn.click(bind(save_system_prompt, view), [state, system], [system_note],
                     api_visibility="private")
    demo.load(bind(on_load, view), [open_id], viewed + [system], **page_event)
    # On a phone the conversation list starts folded behind its button, below the chat.
    demo.load(None, js="""() => {
        if (window.matchMedia("(max-width: 640px)").matches)
            document.querySelector("#conversation-fold button")?.click(); }""")

    streamed = [chatbot, state, box, last]
    api_send.click(bind(send, view), [box, state, system, *knobs], streamed, api_name="send")
    api_regenerate.click(bind(regenerate, view), [state, *knobs], streamed, api_name="regenerate")
    api_edit.click(bind(edit, view), [edit_box, state, *knobs], streamed, api_name="edit")
    api_stop.click(bind(stop, view), [state], [chatbot, state, last], api_name="stop")
    api_new.click(bind(new_conversation, view), None, [chatbot, state, last, conversations, system],
                  api_name="new_conversation")
    gr.api(bind(rate, view), api_name="rate")
    gr.api(bind(read_conversation, view), api_name="open_conversation")
    gr.api(bind(rename_conversation, view), api_name="rename_conversation")
    gr.api(bind(delete_conversation, view), api_name="delete_conversation")
    gr.api(bind(restore_conversation, view), api_name="restore_conversation")

"""The web page (Gradio Blocks): one app with a tab per job.

    Chat     every signed-in user: conversations, streaming, branches, ratings
             (ui_chat.py; ui_chat_api.py, ui_chat_page.py, ui_chat_view.py)
    Curate   curators and admins: the review queue and side-by-side picks
             (ui_curate.py; ui_review.py, ui_compare.py)
    Admin    admins: adapters, training, plots, users
             (ui_admin.py; ui_training.py, ui_users.py)

Each tab's module holds its layout and wiring (`build`, at its end); the handlers are
module-level functions that take the Page, or the tab's view (its components and the Page),
given to Gradio with `bind`.

Every event is also an endpoint of the page's API (`gradio_client`), so each handler finds
the caller (`Page.user`) and checks their role and ownership on the server; the tabs a role
may not use are hidden as well, but hiding is not what protects them.
"""

import html
import json
import types
from pathlib import Path

import gradio as gr

from assistant.auth import Auth, Forbidden
from assistant.chat import ChatService
from storage import chat as store
from storage import open_db

# .page-data: boxes that carry data for the page's script (page_keys.js), never shown; the
# ‹ 2/3 › bar it draws on earlier answers takes the body text's colours.
# The Chatbot's own trash icon only blanks the view (the conversation stays, and comes back
# on the next event); Delete in the sidebar is what deletes. On a phone the chat comes first
# and the conversation list after it.
# Gradio's subdued grey (a dropdown's placeholder, a slider's ends) is 1.9:1 on white and
# 2.2:1 on dark grey, its orange selected tab 2.8:1; AA asks 4.5:1, so they take the body
# text's colour.
CSS = """
#chatbot button[aria-label='Clear'] { display: none; }
.subdued, .min_value, .max_value, button[role=tab].selected {
    color: var(--body-text-color) !important; }
@media (max-width: 640px) { #sidebar { order: 2; } }
.page-data { display: none !important; }
.answer-versions-bar { display: flex; gap: .4rem; align-items: center; margin-top: .5rem;
    font-size: var(--text-sm); color: var(--body-text-color); }
.answer-why { display: flex; flex-wrap: wrap; gap: .35rem .6rem; align-items: center;
    margin: .3rem 0 .6rem; font-size: var(--text-sm); color: var(--body-text-color); }
.answer-why input[type=checkbox] { appearance: auto; -webkit-appearance: checkbox; }
.answer-why input[type=text] { flex: 1 1 12rem; padding: .2rem .4rem; color: inherit;
    background: var(--input-background-fill); border: 1px solid var(--border-color-primary);
    border-radius: var(--radius-sm); }
.answer-why button, .answer-versions-bar button { padding: 0 .55rem;
    border: 1px solid var(--border-color-primary); border-radius: var(--radius-sm);
    background: var(--background-fill-secondary); color: var(--body-text-color);
    cursor: pointer; }
"""


def theme() -> gr.themes.Base:
    """Gradio's default look (light or dark as the system says), with button colours dark
    enough for white text to pass WCAG AA (4.5:1); the stock orange and red do not."""
    fills = {}
    for kind, hue in (("primary", "primary"), ("cancel", "error")):
        for dark in ("", "_dark"):
            fills[f"button_{kind}_background_fill{dark}"] = f"*{hue}_700"
            fills[f"button_{kind}_background_fill_hover{dark}"] = f"*{hue}_800"
            fills[f"button_{kind}_border_color{dark}"] = f"*{hue}_700"
            fills[f"button_{kind}_text_color{dark}"] = "white"
    return gr.themes.Default().set(**fills)


def head() -> str:
    """What goes into the page's <head>: its script (assistant/page_keys.js; Gradio has no
    key bindings and no per-message slots): the keys, the draft, ‹ 2/3 › and the reasons on
    each answer, renaming in place; and the reasons a thumb may carry."""
    from assistant.ui_chat_api import DOWN_REASONS, UP_REASONS
    reasons = json.dumps({"up": UP_REASONS, "down": DOWN_REASONS})
    return (f"<script>window.FLYWHEEL_REASONS = {reasons};\n"
            f"{(Path(__file__).parent / 'page_keys.js').read_text()}</script>")


class Page:
    """What every tab's handlers share: the chat service, the data folder, who is calling."""

    def __init__(self, service: ChatService, auth: Auth, model_spec: str | None):
        self.service = service
        self.home = service.home
        self.auth = auth
        self.model_spec = model_spec  # what `flywheel train` started from the page trains on

    def user(self, request: gr.Request, role: str = "user") -> dict:
        """The caller, if they have at least `role`; otherwise a message in the page."""
        try:
            user = self.auth.user_named(getattr(request, "username", None))
            self.auth.require(user, role)
        except Forbidden as exc:
            raise gr.Error(str(exc)) from None
        return user

    def own_conversation(self, user: dict, conversation_id: str) -> dict:
        """The conversation, if it is the caller's; another user's is 'not found'."""
        with open_db(self.home) as db:
            conversation = store.get_conversation(db, conversation_id)
        if conversation is None or conversation["user_id"] != user["id"]:
            raise gr.Error("No such conversation.")
        return conversation

    def own_message(self, user: dict, message_id: str, curators_too: bool = False) -> dict:
        """A message in one of the caller's conversations (curators: any, when allowed)."""
        curator = curators_too and user["role"] in ("curator", "admin")
        with open_db(self.home) as db:
            message = store.message_for(db, message_id, user["id"], any_owner=curator)
        if message is None:
            raise gr.Error("No such message.")
        return message


def bind(handler, first):
    """`handler` with its first argument given (a tab's view, or the Page), as an event
    handler for Gradio: a bound method, which is what Gradio reads the rest of the signature
    (gr.Request, event data), the type hints, the name and the module of (functools.partial
    hides the type hints from it, so gr.Request would not be filled in)."""
    return types.MethodType(handler, first)


def build_ui(service: ChatService, auth: Auth, model_spec: str | None = None) -> gr.Blocks:
    from assistant import ui_admin, ui_chat, ui_curate
    page = Page(service, auth, model_spec)
    with gr.Blocks(title="Flywheel") as demo:
        with gr.Row():
            gr.Markdown("# Flywheel")
            who = gr.HTML(elem_id="who")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                ui_chat.build(page, demo)
            with gr.Tab("Curate", id="curate", visible=False) as curate_tab:
                ui_curate.build(page, demo)
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                ui_admin.build(page, demo)

        def on_load(request: gr.Request):
            user = page.user(request)
            # Signing out is a POST from this page (the Origin check passes it; other sites' fail).
            signed = "" if user["id"] is None else (
                ' · <form method="post" action="/logout" style="display:inline">'
                '<button type="submit" id="sign-out">Sign out</button></form>')
            return (f"Signed in as <b>{html.escape(user['name'])}</b> ({user['role']}){signed}",
                    gr.Tab(visible=user["role"] in ("curator", "admin")),
                    gr.Tab(visible=user["role"] == "admin"))
        demo.load(on_load, None, [who, curate_tab, admin_tab], api_visibility="private")
    return demo


TAB_ROLES = {"assistant.ui_chat": "user", "assistant.ui_chat_api": "user",
             "assistant.ui_chat_page": "user", "assistant.ui_curate": "curator",
             "assistant.ui_review": "curator", "assistant.ui_compare": "curator",
             "assistant.ui_admin": "admin", "assistant.ui_training": "admin",
             "assistant.ui_users": "admin"}


def endpoint_roles(demo: gr.Blocks) -> dict[str, str]:
    """Each named endpoint of the page's API and the least role that may call it: the role of
    the tab whose module defines its handler (anything else: admin). For the listing that
    `auth.PageApiForRole` shows each caller; each handler checks the caller itself as well."""
    return {fn.api_name: TAB_ROLES.get(getattr(fn.fn, "__module__", ""), "admin")
            for fn in demo.fns.values() if fn.api_name}

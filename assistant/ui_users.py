"""The Admin tab's users section: the list of users (200 a page, in the order they were
added), adding one, a new password, disabling and enabling. The first account turns sign-in
on for everyone, so it must be an admin.

The page's API: /add_user, /reset_password, /disable_user, /enable_user, /more_users.
"""

import gradio as gr

from assistant.ui import Page
from storage import open_db, users

USER_PAGE = 200


def user_page(page: Page, after: str | None = None):
    with open_db(page.home) as db:
        listed = users.list_users(db, limit=USER_PAGE, after=after)
    rows = [[u["name"], u["role"], "disabled" if u["disabled"] else "active",
             "yes" if u["has_password"] else "no", u["created_at"][:16]]
            for u in listed.rows]
    return rows, {"next": listed.next}, gr.Button(interactive=bool(listed.next))


def user_table(page: Page, request: gr.Request):
    """The first page of users, in the order they were added."""
    page.user(request, "admin")
    return user_page(page)[0]


def first_users_cursor(page: Page, request: gr.Request):
    try:
        page.user(request, "admin")
    except gr.Error:  # the first account just turned sign-in on: the page says so
        return gr.skip(), gr.skip()
    return user_page(page)[1:]


def more_users(page: Page, cursor: dict, request: gr.Request):
    """The next page of users."""
    page.user(request, "admin")
    if not cursor or not cursor.get("next"):
        raise gr.Error("No more users.")
    return user_page(page, cursor["next"])


def users_intro(page: Page, request: gr.Request) -> str:
    with open_db(page.home) as db:
        if users.auth_enabled(db):
            return ""
    return ("**No accounts yet**: whoever opens this page on this machine is the admin. "
            "The first account you add must be an admin, and from then on everyone signs "
            "in, you too.")


def add_user(page: Page, name: str, role: str, password: str, request: gr.Request):
    """Add a user with a role and a password. The first account turns sign-in on for
    everyone (the local owner too), so it must be an admin."""
    caller = page.user(request, "admin")
    try:
        with open_db(page.home) as db:  # page users sign in: a password is required
            if caller["id"] is None and role != "admin" and not users.auth_enabled(db):
                raise ValueError("The first account must be an admin: once it exists, "
                                 "everyone signs in, you too.")
            user = users.add_user(db, name or "", role, password=password or "")
    except (KeyError, ValueError) as exc:
        raise gr.Error(str(exc.args[0])) from None
    if caller["id"] is None:
        return [], (f"Added {user['name']} ({user['role']}). Sign-in is on now: "
                    f"[sign in as {user['name']}](/login).")
    return user_table(page, request), f"Added {user['name']} ({user['role']})."


def reset_password(page: Page, name: str, password: str, request: gr.Request):
    """Give a user a new password (signs them out everywhere)."""
    page.user(request, "admin")
    try:
        with open_db(page.home) as db:
            users.set_password(db, (name or "").strip(), password or "")
    except (KeyError, ValueError) as exc:
        raise gr.Error(str(exc)) from None
    return user_table(page, request), f"New password set for {name.strip()}."


def set_disabled(page: Page, name: str, disabled: bool, request: gr.Request):
    """Disable (or enable again) a user: a disabled user cannot sign in or use keys."""
    user = page.user(request, "admin")
    if (name or "").strip() == user["name"]:
        raise gr.Error("You cannot disable yourself.")
    try:
        with open_db(page.home) as db:
            users.set_disabled(db, (name or "").strip(), bool(disabled))
    except KeyError as exc:
        raise gr.Error(str(exc.args[0])) from None
    return user_table(page, request), f"{name.strip()} is {'disabled' if disabled else 'enabled'}."


def disable(page: Page, name: str, request: gr.Request):
    return set_disabled(page, name, True, request)


def enable(page: Page, name: str, request: gr.Request):
    return set_disabled(page, name, False, request)


# ---- the page's versions of /add_user and /reset_password: a mistake is a line under the
# form (not "Error" over the table), and the password box is emptied once it has been used.
class UsersView:
    """The Users tab's components (built by ui_admin._layout)."""
    page: Page
    cursor: gr.State
    people: gr.Dataframe
    name: gr.Textbox
    role: gr.Dropdown
    password_box: gr.Textbox
    api_add: gr.Button
    api_reset: gr.Button
    add_btn: gr.Button
    reset_btn: gr.Button
    disable_btn: gr.Button
    enable_btn: gr.Button
    more_users_btn: gr.Button
    user_note: gr.Markdown
    intro: gr.Markdown

    def __init__(self, page: Page):
        self.page = page


def add_in_page(view: UsersView, name: str, role: str, password: str, request: gr.Request):
    try:
        table, note = add_user(view.page, name, role, password, request)
    except gr.Error as exc:
        return {view.user_note: f"⚠️ {exc.message}"}
    return {view.people: table, view.user_note: note, view.intro: users_intro(view.page, request),
            view.password_box: ""}


def reset_in_page(view: UsersView, name: str, password: str, request: gr.Request):
    try:
        table, note = reset_password(view.page, name, password, request)
    except gr.Error as exc:
        return {view.user_note: f"⚠️ {exc.message}"}
    return {view.people: table, view.user_note: note, view.password_box: ""}

"""The Admin tab: the adapter registry (status, gate verdict, run, data, metrics, thumbs-up
rate) with promote and roll back, each adapter's gate report and loss curves, an A/B split
with its thumbs-up comparison, a training run started now in its own process and the live
progress of whatever run is going (ui_training.py), the "did it help?" figure (thumbs-up per
adapter per day with intervals, answers and feedback per day, promotions: assistant/plots.py)
and each run's loss curve, and users (ui_users.py). This module holds the adapters' handlers,
then the tab's layout and its wiring.

The page's API: /adapters (the newest 50), /older_adapters, /adapter_report, /promote,
/rollback, /start_ab, /stop_ab, /train_now, /training_progress, /add_user, /reset_password,
/disable_user, /enable_user, /more_users. Lists page (the next 50 adapters, 200 users).
"""

from pathlib import Path

import gradio as gr

from assistant.plots import activity_figure, loss_figure
from assistant.ui import Page, bind
from assistant.ui_training import Training, progress, progress_in_page, train_now
from assistant.ui_users import (
    USER_PAGE,
    UsersView,
    add_in_page,
    add_user,
    disable,
    enable,
    first_users_cursor,
    more_users,
    reset_in_page,
    reset_password,
    user_page,
    users_intro,
)
from storage import ab, activity, adapters, open_db, review, runs, users
from storage.run_records import GateReport

ADAPTER_COLUMNS = ["id", "status", "gate", "method", "run", "examples", "train loss",
                   "thumbs up", "thumbs down", "up rate", "created"]
AB_COLUMNS = ["arm", "adapter", "answers", "thumbs up", "thumbs down", "up rate",
              "95% interval", "difference"]
ADAPTER_PAGE = 50  # adapters per page of the registry (a nightly run adds one a day)
RUNS_PLOTTED = 10  # the newest runs' loss curves


def gate_markdown(adapter: dict) -> str:
    """An adapter's gate report as a table: each check, both figures, the limit."""
    gate: GateReport | None = adapter["metrics"].get("gate")
    if not gate:
        return f"**{adapter['id']}**: no gate report (published without the evaluation gate)."
    lines = [f"**{adapter['id']}** ({adapter['status']}), gate **{gate['verdict']}** against "
             f"{gate['reference']}: {gate['reason']}", "",
             "| check | candidate | reference | limit | n | result |", "|---|---|---|---|---|---|"]
    for name, c in gate["checks"].items():
        lines.append(f"| {name.replace('_', ' ')} | {c['candidate']} | {c['reference']} | "
                     f"{c['limit']} | {c['n']} {c['unit']} | {'pass' if c['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def adapter_rows(rows: list[dict], stats: dict) -> list[list]:
    """Table rows of adapters (as adapters.page gives them) with their thumbs."""
    table = []
    for a in rows:
        s = stats.get(a["id"], {"up": 0, "down": 0, "rate": None})
        gate = a["metrics"].get("gate", {}).get("verdict", "")
        table.append([a["id"], a["status"], gate, a["method"], a["run_id"] or "",
                      "" if a["examples"] is None else a["examples"],
                      a["metrics"].get("train_loss", ""), s["up"], s["down"],
                      "" if s["rate"] is None else s["rate"], a["created_at"][:16]])
    return table


# ---- the adapters' handlers --------------------------------------------------------------
def registry(page: Page, request: gr.Request):
    """The newest adapters with their run, data size, metrics and thumbs-up rate; the
    plots (aggregated in the database: a few hundred points, whatever the history)."""
    page.user(request, "admin")
    with open_db(page.home) as db:
        listed, stats = adapters.page(db, limit=ADAPTER_PAGE), review.adapter_ratings(db)
        recent = runs.page(db, limit=RUNS_PLOTTED).rows
        figure = activity_figure(activity.over_time(db))
        wanted = (adapters.active(db) or {}).get("id")
    table = adapter_rows(listed.rows, stats)
    base = stats.get(None)
    if base:
        table.append(["(base model)", "", "", "", "", "", "", base["up"], base["down"],
                      base["rate"], ""])
    losses = loss_figure({r["id"]: r["metrics"].get("loss_curve", []) for r in recent})
    serving = page.service.engine.active_adapter
    line = f"Serving now: **{serving or 'the base model'}**"
    if wanted != serving:  # the server swaps within a poll interval of a promotion
        line += f" (switching to **{wanted or 'the base model'}**, within a second or two)"
    arms = ab_table(page, request)
    # An empty table is hidden: on a phone it is a scrolling box the keys cannot reach.
    return (gr.Dataframe(value=table, visible=bool(table)),
            gr.Dropdown(choices=[a["id"] for a in listed.rows]),
            gr.Plot(value=figure, visible=figure is not None),
            gr.Plot(value=losses, visible=losses is not None), line,
            gr.Dataframe(value=arms, visible=bool(arms)),
            {"next": listed.next}, gr.Button(interactive=bool(listed.next)))


def older_adapters(page: Page, cursor: dict, request: gr.Request):
    """The next page of older adapters in the table."""
    page.user(request, "admin")
    if not cursor or not cursor.get("next"):
        raise gr.Error("No older adapters.")
    with open_db(page.home) as db:
        listed = adapters.page(db, limit=ADAPTER_PAGE, after=cursor["next"])
        stats = review.adapter_ratings(db)
    return (adapter_rows(listed.rows, stats),
            gr.Dropdown(choices=[a["id"] for a in listed.rows]),
            {"next": listed.next}, gr.Button(interactive=bool(listed.next)))


def adapter_report(page: Page, adapter_id: str, request: gr.Request) -> tuple[str, str | None]:
    """The picked adapter's gate report and its run's loss curves (PNG)."""
    page.user(request, "admin")
    with open_db(page.home) as db:
        row = adapters.get(db, adapter_id) if adapter_id else None
    if row is None:
        return "Pick an adapter to see its gate report.", None
    plot = row["metrics"].get("loss_plot")
    return gate_markdown(row), plot if plot and Path(plot).is_file() else None


def report_from_page(page: Page, adapter_id: str, request: gr.Request):
    report, png = adapter_report(page, adapter_id, request)
    return report, gr.Image(value=png, visible=png is not None)  # no empty box before


def ab_table(page: Page, request: gr.Request):
    """The running A/B split: each arm's answers and thumbs since it started."""
    page.user(request, "admin")
    with open_db(page.home) as db:
        report = ab.report(db)
    if report is None:
        return []

    def interval(arm):
        low_high = report[arm]["interval"]
        return "" if low_high is None else f"{low_high[0]:.0%} to {low_high[1]:.0%}"
    return [[arm, report[arm]["adapter"], report[arm]["answers"], report[arm]["up"],
             report[arm]["down"], "" if report[arm]["up_rate"] is None
             else report[arm]["up_rate"], interval(arm),
             ab.verdict(report) if arm == "candidate" else ""]
            for arm in ("candidate", "control")]


def start_ab(page: Page, adapter_id: str, share: float, request: gr.Request) -> str:
    """Send a share of new conversations to a candidate (flywheel adapters ab ID)."""
    user = page.user(request, "admin")
    try:
        with open_db(page.home) as db:
            test = ab.start(db, adapter_id or "", float(share),
                            reason=f"started by {user['name']} in the page")
    except (KeyError, ValueError) as exc:
        raise gr.Error(str(exc.args[0])) from None
    return f"A/B split: {test['share']:.0%} of new conversations go to {adapter_id}."


def stop_ab(page: Page, request: gr.Request) -> str:
    user = page.user(request, "admin")
    with open_db(page.home) as db:
        ended = ab.stop(db, reason=f"stopped by {user['name']} in the page")
    return f"A/B split for {ended['candidate_id']} stopped." if ended else "No A/B split runs."


def promote(page: Page, adapter_id: str, request: gr.Request) -> str:
    """Make an adapter active, as `flywheel adapters promote ID` does."""
    user = page.user(request, "admin")
    if not adapter_id:
        raise gr.Error("Pick an adapter first.")
    try:
        with open_db(page.home) as db:
            adapters.promote(db, adapter_id, reason=f"promoted by {user['name']} in the page")
    except (KeyError, ValueError) as exc:
        raise gr.Error(str(exc.args[0])) from None
    return f"{adapter_id} is now active; the server swaps it in within a second."


def rollback(page: Page, request: gr.Request) -> str:
    """Bring back what served before the active adapter, as `flywheel adapters rollback`."""
    user = page.user(request, "admin")
    try:
        with open_db(page.home) as db:
            row = adapters.rollback(db, reason=f"rolled back by {user['name']} in the page")
    except LookupError as exc:
        raise gr.Error(str(exc.args[0])) from None
    return (f"Rolled back: {row['id'] if row else 'the base model'} is active; the server "
            "switches to it within a second or two.")


# ---- layout and events -------------------------------------------------------------------
class AdminView:
    """The Admin tab's components (built by _layout), the Users tab's, and Train now's run."""
    page: Page
    training: Training
    users: UsersView
    serving: gr.Markdown
    table: gr.Dataframe
    pick: gr.Dropdown
    promote_btn: gr.Button
    rollback_btn: gr.Button
    refresh: gr.Button
    older_btn: gr.Button
    adapter_cursor: gr.State
    status: gr.Markdown
    gate_report: gr.Markdown
    loss_png: gr.Image
    share: gr.Slider
    ab_btn: gr.Button
    ab_stop_btn: gr.Button
    ab_view: gr.Dataframe
    train_btn: gr.Button
    train_log: gr.Markdown
    live_plot: gr.Plot
    timer: gr.Timer
    thumbs: gr.Plot
    curves: gr.Plot

    def __init__(self, page: Page):
        self.page = page
        self.training = Training(page)
        self.users = UsersView(page)

    def shown(self) -> list:
        """What the registry fills in (registry's outputs, in order)."""
        return [self.table, self.pick, self.thumbs, self.curves, self.serving, self.ab_view,
                self.adapter_cursor, self.older_btn]


def on_load(view: AdminView, request: gr.Request):
    page = view.page
    if page.auth.user_named(getattr(request, "username", None))["role"] != "admin":
        return [gr.skip()] * (len(view.shown()) + 5)
    # Admins follow training live, whoever started it (the nightly schedule, say).
    return (*registry(page, request), *user_page(page), gr.Timer(active=True),
            users_intro(page, request))


def _layout(view: AdminView) -> None:
    with gr.Tabs():
        with gr.Tab("Adapters"):
            view.serving = gr.Markdown(elem_id="serving")
            view.table = gr.Dataframe(headers=ADAPTER_COLUMNS, interactive=False,
                                      elem_id="adapters", visible=False)
            with gr.Row():
                view.pick = gr.Dropdown(label="Adapter", choices=[], elem_id="adapter-pick")
                view.promote_btn = gr.Button("Promote", variant="primary", elem_id="promote")
                view.rollback_btn = gr.Button("Roll back", variant="stop", elem_id="rollback")
                view.refresh = gr.Button("Refresh", elem_id="refresh-adapters")
                view.older_btn = gr.Button("Older adapters", interactive=False,
                                           elem_id="older-adapters")
            view.adapter_cursor, view.users.cursor = gr.State({}), gr.State({})
            view.status = gr.Markdown(elem_id="admin-status")
            with gr.Row():
                view.gate_report = gr.Markdown(elem_id="gate-report")
                view.loss_png = gr.Image(label="Loss curves of its run", type="filepath",
                                         interactive=False, elem_id="loss-png", visible=False)
            with gr.Row():
                view.share = gr.Slider(0.05, 0.5, value=ab.ABConfig.share, step=0.05,
                                       label="A/B: share of new conversations for the candidate",
                                       elem_id="ab-share")
                view.ab_btn = gr.Button("Start A/B", elem_id="start-ab")
                view.ab_stop_btn = gr.Button("Stop A/B", elem_id="stop-ab")
            view.ab_view = gr.Dataframe(headers=AB_COLUMNS, interactive=False,
                                        elem_id="ab-table", label="A/B split since it started",
                                        visible=False)
            with gr.Row():
                view.train_btn = gr.Button("Train now", elem_id="train-now")
            view.train_log = gr.Markdown(elem_id="train-progress")
            view.live_plot = gr.Plot(label="Loss of the run training now", elem_id="live-loss",
                                     visible=False)
            view.timer = gr.Timer(2.0, active=False)
        with gr.Tab("Plots"):
            view.thumbs = gr.Plot(label="Did it help? Thumbs-up, answers and feedback per day, "
                                        "with each promotion", elem_id="activity-plot",
                                  visible=False)
            view.curves = gr.Plot(label="Training loss of the newest runs", elem_id="loss-plot",
                                  visible=False)
        with gr.Tab("Users"):
            u = view.users
            u.people = gr.Dataframe(headers=["name", "role", "state", "password", "created"],
                                    interactive=False, elem_id="users")
            with gr.Row():
                u.name = gr.Textbox(label="Name", elem_id="user-name")
                u.role = gr.Dropdown(list(users.ROLES), value=users.NEW_ROLE, label="Role",
                                     elem_id="user-role")
                u.password_box = gr.Textbox(label="Password", type="password",
                                            elem_id="user-password")
                u.api_add, u.api_reset = gr.Button(visible=False), gr.Button(visible=False)
            with gr.Row():
                u.add_btn = gr.Button("Add user", variant="primary", elem_id="add-user")
                u.reset_btn = gr.Button("Set password", elem_id="reset-password")
                u.disable_btn = gr.Button("Disable", variant="stop", elem_id="disable-user")
                u.enable_btn = gr.Button("Enable", elem_id="enable-user")
                u.more_users_btn = gr.Button(f"Next {USER_PAGE} users", interactive=False,
                                             elem_id="more-users")
            u.user_note = gr.Markdown(elem_id="user-status")
            u.intro = gr.Markdown(elem_id="users-intro")


def build(page: Page, demo: gr.Blocks) -> None:
    v = AdminView(page)
    _layout(v)
    u, training = v.users, v.training
    shown = v.shown()
    v.refresh.click(bind(registry, page), None, shown, api_name="adapters")
    v.older_btn.click(bind(older_adapters, page), [v.adapter_cursor],
                      [v.table, v.pick, v.adapter_cursor, v.older_btn], api_name="older_adapters")
    u.more_users_btn.click(bind(more_users, page), [u.cursor],
                           [u.people, u.cursor, u.more_users_btn], api_name="more_users")
    # The page's own events pass the Dropdown's value (which Gradio checks against its
    # choices); the API takes any id and lets the handler answer, as /promote does. The
    # page's events are named apart: a name from the function's would take the API's.
    v.pick.change(bind(report_from_page, page), [v.pick], [v.gate_report, v.loss_png],
                  api_visibility="private")
    gr.api(bind(adapter_report, page), api_name="adapter_report")
    v.ab_btn.click(bind(start_ab, page), [v.pick, v.share], [v.status],
                   api_name="start_ab_from_page", api_visibility="private").then(
        bind(registry, page), None, shown, api_visibility="private")
    gr.api(bind(start_ab, page), api_name="start_ab")
    v.ab_stop_btn.click(bind(stop_ab, page), None, [v.status], api_name="stop_ab").then(
        bind(registry, page), None, shown, api_visibility="private")
    v.promote_btn.click(bind(promote, page), [v.pick], [v.status],
                        api_name="promote_from_page", api_visibility="private").then(
        bind(registry, page), None, shown, api_visibility="private")
    gr.api(bind(promote, page), api_name="promote")
    v.rollback_btn.click(bind(rollback, page), None, [v.status], api_name="rollback").then(
        bind(registry, page), None, shown, api_visibility="private")
    v.train_btn.click(bind(train_now, training), None, [v.status], api_name="train_now").then(
        lambda: gr.Timer(active=True), None, [v.timer], api_visibility="private")
    v.timer.tick(bind(progress_in_page, training), None, [v.train_log, v.live_plot],
                 api_visibility="private")
    gr.api(bind(progress, training), api_name="training_progress")
    user_pages = dict(fn=bind(first_users_cursor, page), inputs=None,
                      outputs=[u.cursor, u.more_users_btn], api_visibility="private")
    u.add_btn.click(bind(add_in_page, u), [u.name, u.role, u.password_box],
                    [u.people, u.user_note, u.intro, u.password_box],
                    api_visibility="private").then(**user_pages)
    u.reset_btn.click(bind(reset_in_page, u), [u.name, u.password_box],
                      [u.people, u.user_note, u.password_box],
                      api_visibility="private").then(**user_pages)
    u.api_add.click(bind(add_user, page), [u.name, u.role, u.password_box],
                    [u.people, u.user_note], api_name="add_user")
    u.api_reset.click(bind(reset_password, page), [u.name, u.password_box],
                      [u.people, u.user_note], api_name="reset_password")
    u.disable_btn.click(bind(disable, page), [u.name], [u.people, u.user_note],
                        api_name="disable_user").then(**user_pages)
    u.enable_btn.click(bind(enable, page), [u.name], [u.people, u.user_note],
                       api_name="enable_user").then(**user_pages)
    demo.load(bind(on_load, v), None,
              [*shown, u.people, u.cursor, u.more_users_btn, v.timer, u.intro],
              api_visibility="private")

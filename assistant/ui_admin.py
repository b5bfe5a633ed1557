"""The Admin tab: the adapter registry (status, gate verdict, run, data, metrics, thumbs-up
rate) with promote and roll back, each adapter's gate report and loss curves, an A/B split
with its thumbs-up comparison, a training run started now in its own process, the live
progress of whatever run is going (from the database, so nightly runs show too), the "did it
help?" figure (thumbs-up per adapter per day with intervals, answers and feedback per day,
promotions: assistant/plots.py) and each run's loss curve, and users.

The page's API: /adapters (the newest 50), /older_adapters, /adapter_report, /promote,
/rollback, /start_ab, /stop_ab, /train_now, /training_progress, /add_user, /reset_password,
/disable_user, /enable_user, /more_users. Lists page (the next 50 adapters, 200 users).
"""

from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from assistant.plots import activity_figure, loss_figure
from assistant.training_process import start_training
from storage import ab, activity, adapters, lock, open_db, review, runs, users
from storage.run_records import GateReport

ADAPTER_COLUMNS = ["id", "status", "gate", "method", "run", "examples", "train loss",
                   "thumbs up", "thumbs down", "up rate", "created"]
AB_COLUMNS = ["arm", "adapter", "answers", "thumbs up", "thumbs down", "up rate",
              "95% interval", "difference"]
ADAPTER_PAGE = 50  # adapters per page of the registry (a nightly run adds one a day)
RUNS_PLOTTED = 10  # the newest runs' loss curves
USER_PAGE = 200


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


PHASES = ["data", "training", "evaluating", "publishing", "done"]  # a run's, in order


def time_left(started: str | None, done: int, total: int | None, first: int = 0) -> str:
    """'about 4 min left' from the rate so far (steps or answers since `started`)."""
    if not started or not total or done <= first:
        return "time left: after the first one"
    elapsed = (datetime.now(timezone.utc) - datetime.fromisoformat(
        started.replace("Z", "+00:00"))).total_seconds()
    seconds = elapsed / (done - first) * (total - done)
    if seconds < 60:
        return "less than a minute left"
    minutes = round(seconds / 60)
    return f"about {minutes} min left" if minutes < 90 else \
        f"about {minutes // 60} h {minutes % 60:02d} min left"


def run_progress(home, run: dict | None) -> str:
    """A run's phases as one line each done (✓), going (▶) or to come (·), with the count and
    the time left of the one going; the last line says what the run did."""
    if run is None:
        return "No training run yet."
    p = run["progress"]
    state = run["status"]
    if state == "running" and not lock.training_in_progress(home):
        state = "interrupted (resume with `flywheel train --resume`)"
    lines = [f"**{run['id']}** ({run['method'] or 'method picked after the data'}): {state}"]
    phase = p.get("phase", "data")
    at = PHASES.index(phase) if phase in PHASES else 0
    finished = p.get("finished", {})  # what each phase's finished tasks did
    for n, name in enumerate(PHASES[:-1]):
        if n < at or phase == "done":
            did = "; ".join(finished.get(name, []))
            lines.append(f"- ✓ {name}{f' ({did})' if did else ''}")
            continue
        if n > at:
            lines.append(f"- · {name}")
            continue
        detail = ""
        if name == "training" and p.get("max_steps"):
            step, total = p.get("step", 0), p["max_steps"]
            detail = (f": stage {p.get('stage', '')}, step {step} of {total}, "
                      f"{time_left(p.get('task_started'), step, total, p.get('first_step', 0))}")
            detail += "".join(f" · {label} {p[key]}" for key, label in
                              (("loss", "loss"), ("eval_loss", "validation loss"))
                              if p.get(key) is not None)
        elif p.get("task") and p.get("total"):
            detail = (f": {p['task']}, {p.get('done', 0)} of {p['total']} {p.get('unit', '')}, "
                      f"{time_left(p.get('task_started'), p.get('done', 0), p['total'])}")
        if finished.get(name):
            detail += f" (done: {'; '.join(finished[name])})"
        lines.append(f"- ▶ **{name}**{detail}")
    if phase == "done":
        lines.append(f"\nDone: {p.get('decision', 'finished')}.")
    if run.get("error"):
        lines.append(f"\nFailed: {run['error']}")
    return "\n".join(lines)


def live_losses(run: dict | None):
    """The running stage's loss curve (a figure), while its run trains; None otherwise."""
    if not run or run["status"] != "running" or not run["progress"].get("losses"):
        return None
    points = run["progress"]["losses"]
    return loss_figure({f"{run['id']} ({run['progress'].get('stage', '')}), live":
                        [loss for _, loss in points]}, steps=[step for step, _ in points])


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


def build(page, demo: gr.Blocks) -> None:
    training: dict = {}  # the one training process this server started, if any

    def registry(request: gr.Request):
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
        arms = ab_table(request)
        # An empty table is hidden: on a phone it is a scrolling box the keys cannot reach.
        return (gr.Dataframe(value=table, visible=bool(table)),
                gr.Dropdown(choices=[a["id"] for a in listed.rows]),
                gr.Plot(value=figure, visible=figure is not None),
                gr.Plot(value=losses, visible=losses is not None), line,
                gr.Dataframe(value=arms, visible=bool(arms)),
                {"next": listed.next}, gr.Button(interactive=bool(listed.next)))

    def older_adapters(cursor: dict, request: gr.Request):
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

    def adapter_report(adapter_id: str, request: gr.Request) -> tuple[str, str | None]:
        """The picked adapter's gate report and its run's loss curves (PNG)."""
        page.user(request, "admin")
        with open_db(page.home) as db:
            row = adapters.get(db, adapter_id) if adapter_id else None
        if row is None:
            return "Pick an adapter to see its gate report.", None
        plot = row["metrics"].get("loss_plot")
        return gate_markdown(row), plot if plot and Path(plot).is_file() else None

    def ab_table(request: gr.Request):
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

    def start_ab(adapter_id: str, share: float, request: gr.Request) -> str:
        """Send a share of new conversations to a candidate (flywheel adapters ab ID)."""
        user = page.user(request, "admin")
        try:
            with open_db(page.home) as db:
                test = ab.start(db, adapter_id or "", float(share),
                                reason=f"started by {user['name']} in the page")
        except (KeyError, ValueError) as exc:
            raise gr.Error(str(exc.args[0])) from None
        return f"A/B split: {test['share']:.0%} of new conversations go to {adapter_id}."

    def stop_ab(request: gr.Request) -> str:
        user = page.user(request, "admin")
        with open_db(page.home) as db:
            ended = ab.stop(db, reason=f"stopped by {user['name']} in the page")
        return f"A/B split for {ended['candidate_id']} stopped." if ended else "No A/B split runs."

    def promote(adapter_id: str, request: gr.Request) -> str:
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

    def rollback(request: gr.Request) -> str:
        """Bring back what served before the active adapter, as `flywheel adapters rollback`."""
        user = page.user(request, "admin")
        try:
            with open_db(page.home) as db:
                row = adapters.rollback(db, reason=f"rolled back by {user['name']} in the page")
        except LookupError as exc:
            raise gr.Error(str(exc.args[0])) from None
        return (f"Rolled back: {row['id'] if row else 'the base model'} is active; the server "
                "switches to it within a second or two.")

    def train_now(request: gr.Request) -> str:
        """Start `flywheel train` in its own process (the server keeps serving)."""
        page.user(request, "admin")
        process = training.get("process")
        if process is not None and process.poll() is None:
            raise gr.Error("A training run started here is still going.")
        log_path = page.home.runs_dir / "train-now.log"
        model = ["--model", page.model_spec] if page.model_spec else []
        training["process"] = start_training(page.home, model, log_path, detached=True)
        training["log"] = log_path
        return "Training started."

    def progress(request: gr.Request) -> str:
        """The newest run's phases from the database (whoever started it: the nightly
        schedule too), then how a run started from this page ended, in its last line."""
        page.user(request, "admin")
        with open_db(page.home) as db:
            newest = runs.latest(db)
        return progress_text(newest)

    def progress_text(newest: dict | None) -> str:
        text = run_progress(page.home, newest)
        process = training.get("process")
        if process is None:
            return text
        log = training["log"]
        if process.poll() is None:
            return f"{text}\n\nTraining started here is running (its output: `{log}`)."
        # The output's last line says why a run ended (or never began: too little data);
        # the terminal's progress bars (carriage returns) are not lines.
        output = log.read_text(errors="replace").splitlines()
        said = next((line.rsplit("\r", 1)[-1].strip() for line in reversed(output)
                     if line.rsplit("\r", 1)[-1].strip()), "")
        return (f"{text}\n\nTraining started here finished (exit {process.returncode}): "
                f"{said} (its output: `{log}`)")

    def progress_in_page(request: gr.Request):
        """The phases and, while a run trains, its live loss curve."""
        page.user(request, "admin")
        with open_db(page.home) as db:
            newest = runs.latest(db)
        figure = live_losses(newest)
        return progress_text(newest), gr.Plot(value=figure, visible=figure is not None)

    def user_page(after: str | None = None):
        with open_db(page.home) as db:
            listed = users.list_users(db, limit=USER_PAGE, after=after)
        rows = [[u["name"], u["role"], "disabled" if u["disabled"] else "active",
                 "yes" if u["has_password"] else "no", u["created_at"][:16]]
                for u in listed.rows]
        return rows, {"next": listed.next}, gr.Button(interactive=bool(listed.next))

    def user_table(request: gr.Request):
        """The first page of users, in the order they were added."""
        page.user(request, "admin")
        return user_page()[0]

    def first_users_cursor(request: gr.Request):
        try:
            page.user(request, "admin")
        except gr.Error:  # the first account just turned sign-in on: the page says so
            return gr.skip(), gr.skip()
        return user_page()[1:]

    def more_users(cursor: dict, request: gr.Request):
        """The next page of users."""
        page.user(request, "admin")
        if not cursor or not cursor.get("next"):
            raise gr.Error("No more users.")
        return user_page(cursor["next"])

    def add_user(name: str, role: str, password: str, request: gr.Request):
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
        return user_table(request), f"Added {user['name']} ({user['role']})."

    def users_intro(request: gr.Request) -> str:
        with open_db(page.home) as db:
            if users.auth_enabled(db):
                return ""
        return ("**No accounts yet**: whoever opens this page on this machine is the admin. "
                "The first account you add must be an admin, and from then on everyone signs "
                "in, you too.")

    def reset_password(name: str, password: str, request: gr.Request):
        """Give a user a new password (signs them out everywhere)."""
        page.user(request, "admin")
        try:
            with open_db(page.home) as db:
                users.set_password(db, (name or "").strip(), password or "")
        except (KeyError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        return user_table(request), f"New password set for {name.strip()}."

    def set_disabled(name: str, disabled: bool, request: gr.Request):
        """Disable (or enable again) a user: a disabled user cannot sign in or use keys."""
        user = page.user(request, "admin")
        if (name or "").strip() == user["name"]:
            raise gr.Error("You cannot disable yourself.")
        try:
            with open_db(page.home) as db:
                users.set_disabled(db, (name or "").strip(), bool(disabled))
        except KeyError as exc:
            raise gr.Error(str(exc.args[0])) from None
        return user_table(request), f"{name.strip()} is {'disabled' if disabled else 'enabled'}."

    # ---- layout and events ----------------------------------------------------------------
    with gr.Tabs():
        with gr.Tab("Adapters"):
            serving = gr.Markdown(elem_id="serving")
            table = gr.Dataframe(headers=ADAPTER_COLUMNS, interactive=False,
                                 elem_id="adapters", visible=False)
            with gr.Row():
                pick = gr.Dropdown(label="Adapter", choices=[], elem_id="adapter-pick")
                promote_btn = gr.Button("Promote", variant="primary", elem_id="promote")
                rollback_btn = gr.Button("Roll back", variant="stop", elem_id="rollback")
                refresh = gr.Button("Refresh", elem_id="refresh-adapters")
                older_btn = gr.Button("Older adapters", interactive=False,
                                      elem_id="older-adapters")
            adapter_cursor, user_cursor = gr.State({}), gr.State({})
            status = gr.Markdown(elem_id="admin-status")
            with gr.Row():
                gate_report = gr.Markdown(elem_id="gate-report")
                loss_png = gr.Image(label="Loss curves of its run", type="filepath",
                                    interactive=False, elem_id="loss-png", visible=False)
            with gr.Row():
                share = gr.Slider(0.05, 0.5, value=0.2, step=0.05,
                                  label="A/B: share of new conversations for the candidate",
                                  elem_id="ab-share")
                ab_btn = gr.Button("Start A/B", elem_id="start-ab")
                ab_stop_btn = gr.Button("Stop A/B", elem_id="stop-ab")
            ab_view = gr.Dataframe(headers=AB_COLUMNS, interactive=False, elem_id="ab-table",
                                   label="A/B split since it started", visible=False)
            with gr.Row():
                train_btn = gr.Button("Train now", elem_id="train-now")
            train_log = gr.Markdown(elem_id="train-progress")
            live_plot = gr.Plot(label="Loss of the run training now", elem_id="live-loss",
                                visible=False)
            timer = gr.Timer(2.0, active=False)
        with gr.Tab("Plots"):
            thumbs = gr.Plot(label="Did it help? Thumbs-up, answers and feedback per day, "
                                   "with each promotion", elem_id="activity-plot",
                             visible=False)
            curves = gr.Plot(label="Training loss of the newest runs", elem_id="loss-plot",
                             visible=False)
        with gr.Tab("Users"):
            people = gr.Dataframe(headers=["name", "role", "state", "password", "created"],
                                  interactive=False, elem_id="users")
            with gr.Row():
                name = gr.Textbox(label="Name", elem_id="user-name")
                role = gr.Dropdown(list(users.ROLES), value="user", label="Role",
                                   elem_id="user-role")
                password_box = gr.Textbox(label="Password", type="password",
                                          elem_id="user-password")
                api_add, api_reset = gr.Button(visible=False), gr.Button(visible=False)
            with gr.Row():
                add_btn = gr.Button("Add user", variant="primary", elem_id="add-user")
                reset_btn = gr.Button("Set password", elem_id="reset-password")
                disable_btn = gr.Button("Disable", variant="stop", elem_id="disable-user")
                enable_btn = gr.Button("Enable", elem_id="enable-user")
                more_users_btn = gr.Button(f"Next {USER_PAGE} users", interactive=False,
                                           elem_id="more-users")
            user_note = gr.Markdown(elem_id="user-status")
            intro = gr.Markdown(elem_id="users-intro")

    shown = [table, pick, thumbs, curves, serving, ab_view, adapter_cursor, older_btn]
    refresh.click(registry, None, shown, api_name="adapters")
    older_btn.click(older_adapters, [adapter_cursor], [table, pick, adapter_cursor, older_btn],
                    api_name="older_adapters")
    more_users_btn.click(more_users, [user_cursor], [people, user_cursor, more_users_btn],
                         api_name="more_users")
    # The page's own events pass the Dropdown's value (which Gradio checks against its
    # choices); the API takes any id and lets the handler answer, as /promote does.
    def report_from_page(adapter_id: str, request: gr.Request):
        report, png = adapter_report(adapter_id, request)
        return report, gr.Image(value=png, visible=png is not None)  # no empty box before

    def start_ab_from_page(adapter_id: str, share: float, request: gr.Request) -> str:
        return start_ab(adapter_id, share, request)
    pick.change(report_from_page, [pick], [gate_report, loss_png], api_visibility="private")
    gr.api(adapter_report, api_name="adapter_report")
    ab_btn.click(start_ab_from_page, [pick, share], [status], api_visibility="private").then(
        registry, None, shown, api_visibility="private")
    gr.api(start_ab, api_name="start_ab")
    ab_stop_btn.click(stop_ab, None, [status], api_name="stop_ab").then(
        registry, None, shown, api_visibility="private")
    def promote_from_page(adapter_id: str, request: gr.Request) -> str:
        return promote(adapter_id, request)
    promote_btn.click(promote_from_page, [pick], [status], api_visibility="private").then(
        registry, None, shown, api_visibility="private")
    gr.api(promote, api_name="promote")
    rollback_btn.click(rollback, None, [status], api_name="rollback").then(
        registry, None, shown, api_visibility="private")
    train_btn.click(train_now, None, [status], api_name="train_now").then(
        lambda: gr.Timer(active=True), None, [timer], api_visibility="private")
    timer.tick(progress_in_page, None, [train_log, live_plot], api_visibility="private")
    gr.api(progress, api_name="training_progress")
    user_pages = dict(fn=first_users_cursor, inputs=None, outputs=[user_cursor, more_users_btn],
                      api_visibility="private")
    # The page's versions of these two: a mistake is a line under the form (not "Error"
    # over the table), and the password box is emptied once it has been used.
    def add_in_page(name: str, role: str, password: str, request: gr.Request):
        try:
            table, note = add_user(name, role, password, request)
        except gr.Error as exc:
            return {user_note: f"⚠️ {exc.message}"}
        return {people: table, user_note: note, intro: users_intro(request), password_box: ""}

    def reset_in_page(name: str, password: str, request: gr.Request):
        try:
            table, note = reset_password(name, password, request)
        except gr.Error as exc:
            return {user_note: f"⚠️ {exc.message}"}
        return {people: table, user_note: note, password_box: ""}
    add_btn.click(add_in_page, [name, role, password_box], [people, user_note, intro,
                                                            password_box],
                  api_visibility="private").then(**user_pages)
    reset_btn.click(reset_in_page, [name, password_box], [people, user_note, password_box],
                    api_visibility="private").then(**user_pages)
    api_add.click(add_user, [name, role, password_box], [people, user_note], api_name="add_user")
    api_reset.click(reset_password, [name, password_box], [people, user_note],
                    api_name="reset_password")

    def disable(name: str, request: gr.Request):
        return set_disabled(name, True, request)

    def enable(name: str, request: gr.Request):
        return set_disabled(name, False, request)
    disable_btn.click(disable, [name], [people, user_note],
                      api_name="disable_user").then(**user_pages)
    enable_btn.click(enable, [name], [people, user_note],
                     api_name="enable_user").then(**user_pages)

    def on_load(request: gr.Request):
        if page.auth.user_named(getattr(request, "username", None))["role"] != "admin":
            return [gr.skip()] * (len(shown) + 5)
        # Admins follow training live, whoever started it (the nightly schedule, say).
        return (*registry(request), *user_page(), gr.Timer(active=True), users_intro(request))
    demo.load(on_load, None, [*shown, people, user_cursor, more_users_btn, timer, intro],
              api_visibility="private")

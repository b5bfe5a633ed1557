"""The Admin tab: the adapter registry (status, run, data, metrics, thumbs-up rate) with
promote and roll back, a training run started now in its own process with its progress,
plots of thumbs-up rate per adapter over time and of each run's loss curve, and users.

The page's API: /adapters, /promote, /rollback, /train_now, /training_progress, /users,
/add_user, /reset_password, /set_disabled.
"""

import subprocess
import sys

import gradio as gr
import pandas as pd

from storage import adapters, review, runs, users
from storage import open_db

ADAPTER_COLUMNS = ["id", "status", "method", "run", "examples", "train loss", "thumbs up",
                   "thumbs down", "up rate", "created"]


def build(page, demo: gr.Blocks) -> None:
    training: dict = {}  # the one training process this server started, if any

    def registry(request: gr.Request):
        """Every adapter with its run, data size, metrics and thumbs-up rate; the plots."""
        page.user(request, "admin")
        with open_db(page.home) as db:
            rows, stats = adapters.list_adapters(db), review.adapter_ratings(db)
            all_runs = runs.list_runs(db)
            daily = review.thumbs_up_over_time(db)
        by_run = {r["id"]: r for r in all_runs}
        table = []
        for a in reversed(rows):
            run = by_run.get(a["run_id"], {})
            s = stats.get(a["id"], {"up": 0, "down": 0, "rate": None})
            table.append([a["id"], a["status"], a["method"], a["run_id"] or "",
                          run.get("manifest", {}).get("count", ""),
                          a["metrics"].get("train_loss", ""), s["up"], s["down"],
                          "" if s["rate"] is None else s["rate"], a["created_at"][:16]])
        base = stats.get(None)
        if base:
            table.append(["(base model)", "", "", "", "", "", base["up"], base["down"],
                          base["rate"], ""])
        losses = [{"run": r["id"], "step": i + 1, "loss": loss} for r in all_runs
                  for i, loss in enumerate(r["metrics"].get("loss_curve", []))]
        thumbs = pd.DataFrame(daily or [], columns=["time", "adapter", "thumbs_up_rate",
                                                     "ratings"])
        thumbs["time"] = pd.to_datetime(thumbs["time"])
        curves = pd.DataFrame(losses or [], columns=["run", "step", "loss"])
        serving = page.service.engine.active_adapter or "the base model"
        return (table, gr.Dropdown(choices=[a["id"] for a in rows]), thumbs, curves,
                f"Serving now: **{serving}**")

    def promote(adapter_id: str, request: gr.Request) -> str:
        """Make an adapter active, as `flywheel adapters promote ID` does."""
        user = page.user(request, "admin")
        if not adapter_id:
            raise gr.Error("Pick an adapter first.")
        try:
            with open_db(page.home) as db:
                adapters.promote(db, adapter_id, reason=f"promoted by {user['name']} in the page")
        except KeyError as exc:
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
        return f"Rolled back: {row['id'] if row else 'the base model'} is now active."

    def train_now(request: gr.Request) -> str:
        """Start `flywheel train` in its own process (the server keeps serving)."""
        page.user(request, "admin")
        process = training.get("process")
        if process is not None and process.poll() is None:
            raise gr.Error("A training run started here is still going.")
        log_path = page.home.runs_dir / "train-now.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w")
        model = ["--model", page.model_spec] if page.model_spec else []
        training["process"] = subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "train", "--home", str(page.home.root), *model],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        training["log"] = log_path
        return "Training started."

    def progress(request: gr.Request) -> str:
        """The training process's state and the end of its output (progress bars included)."""
        page.user(request, "admin")
        process = training.get("process")
        if process is None:
            return "No training run started from this page."
        state = "running" if process.poll() is None else f"finished (exit {process.returncode})"
        text = training["log"].read_text(errors="replace").replace("\r", "\n")
        lines = [line for line in text.splitlines() if line.strip()][-12:]
        return f"Training {state}\n" + "\n".join(lines)

    def user_table(request: gr.Request):
        page.user(request, "admin")
        with open_db(page.home) as db:
            rows = users.list_users(db)
        return [[u["name"], u["role"], "disabled" if u["disabled"] else "active",
                 "yes" if u["has_password"] else "no", u["created_at"][:16]] for u in rows]

    def add_user(name: str, role: str, password: str, request: gr.Request):
        """Add a user with a role and a password."""
        page.user(request, "admin")
        try:
            with open_db(page.home) as db:  # page users sign in: a password is required
                user = users.add_user(db, name or "", role, password=password or "")
        except (KeyError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        return user_table(request), f"Added {user['name']} ({user['role']})."

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
                                 elem_id="adapters")
            with gr.Row():
                pick = gr.Dropdown(label="Adapter", choices=[], elem_id="adapter-pick")
                promote_btn = gr.Button("Promote", variant="primary", elem_id="promote")
                rollback_btn = gr.Button("Roll back", variant="stop", elem_id="rollback")
                refresh = gr.Button("Refresh", elem_id="refresh-adapters")
            status = gr.Markdown(elem_id="admin-status")
            with gr.Row():
                train_btn = gr.Button("Train now", elem_id="train-now")
            train_log = gr.Textbox(label="Training progress", lines=8, interactive=False,
                                   elem_id="train-progress")
            timer = gr.Timer(2.0, active=False)
        with gr.Tab("Plots"):
            thumbs = gr.LinePlot(x="time", y="thumbs_up_rate", color="adapter",
                                 title="Thumbs-up rate per adapter (running, per rated answer)",
                                 y_lim=[0, 1],
                                 elem_id="thumbs-plot")
            curves = gr.LinePlot(x="step", y="loss", color="run", title="Training loss per run",
                                 elem_id="loss-plot")
        with gr.Tab("Users"):
            people = gr.Dataframe(headers=["name", "role", "state", "password", "created"],
                                  interactive=False, elem_id="users")
            with gr.Row():
                name = gr.Textbox(label="Name", elem_id="user-name")
                role = gr.Dropdown(list(users.ROLES), value="user", label="Role",
                                   elem_id="user-role")
                password = gr.Textbox(label="Password", type="password",
                                      elem_id="user-password")
            with gr.Row():
                add_btn = gr.Button("Add user", variant="primary", elem_id="add-user")
                reset_btn = gr.Button("Set password", elem_id="reset-password")
                disable_btn = gr.Button("Disable", variant="stop", elem_id="disable-user")
                enable_btn = gr.Button("Enable", elem_id="enable-user")
            user_note = gr.Markdown(elem_id="user-status")

    shown = [table, pick, thumbs, curves, serving]
    refresh.click(registry, None, shown, api_name="adapters")
    def promote_from_page(adapter_id: str, request: gr.Request) -> str:
        return promote(adapter_id, request)
    promote_btn.click(promote_from_page, [pick], [status], api_visibility="private").then(
        registry, None, shown, api_visibility="private")
    gr.api(promote, api_name="promote")
    rollback_btn.click(rollback, None, [status], api_name="rollback").then(
        registry, None, shown, api_visibility="private")
    train_btn.click(train_now, None, [status], api_name="train_now").then(
        lambda: gr.Timer(active=True), None, [timer], api_visibility="private")
    timer.tick(progress, None, [train_log], api_name="training_progress")
    add_btn.click(add_user, [name, role, password], [people, user_note], api_name="add_user")
    reset_btn.click(reset_password, [name, password], [people, user_note],
                    api_name="reset_password")

    def disable(name: str, request: gr.Request):
        return set_disabled(name, True, request)

    def enable(name: str, request: gr.Request):
        return set_disabled(name, False, request)
    disable_btn.click(disable, [name], [people, user_note], api_name="disable_user")
    enable_btn.click(enable, [name], [people, user_note], api_name="enable_user")

    def on_load(request: gr.Request):
        if page.auth.user_named(getattr(request, "username", None))["role"] != "admin":
            return [gr.skip()] * 6
        return (*registry(request), user_table(request))
    demo.load(on_load, None, [*shown, people], api_visibility="private")

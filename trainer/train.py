"""`flywheel train`: one cycle from feedback to a served adapter, safe to leave running nightly.

    lock         one run at a time (storage/lock.py); a crashed run does not hold it
    prepare      feedback -> SFT / DPO / KTO datasets (trainer/dataset.py), replay and
                 anchor examples mixed in (trainer/mixing.py), the method picked
                 (trainer/methods.py), the gate's sets fixed (trainer/gate_sets.py), the
                 feedback screened (trainer/feedback_screen.py: a night the base model
                 cannot read is refused before training); all of it written to runs/<id>/
                 so a resumed run trains on exactly the same data
    train        each stage with TRL + LoRA, checkpointing as it goes (trainer/methods.py)
    gate         the candidate against the active adapter or the base (trainer/gate.py)
    publish      adapter folder renamed into place, its row (candidate or rejected), the
                 run's result and, where policy allows, the promotion: one transaction

A run killed at any point leaves nothing the server would load: the server only loads the
adapter row marked active, and that row is written with the folder already complete.
`flywheel train --resume` continues the interrupted run from its last checkpoint.

Under `accelerate launch` every process trains; only the main one takes the lock, prepares
the data, evaluates and writes to the database.
"""

import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from assistant import models
from storage import Home, ab, adapters, init_db, lock, open_db, runs, write_atomic
from storage import chat as store
from storage.db import transaction
from storage.home import folder_atomically
from storage.run_records import GateReport
from trainer import feedback_screen, methods
from trainer.config import TrainConfig, as_dict, from_dict
from trainer.feedback_screen import FeedbackRefused
from trainer.gate_sets import gate_sets
from trainer.methods import NotEnoughData
from trainer.mixing import REPLAY_FILE, REPLAYED, gather
from trainer.plan import TrainingPlan
from trainer.progress import ProgressToDatabase, plot_losses, report_to, save_json, stop_reporting

__all__ = ["run_cycle", "FeedbackRefused", "NotEnoughData", "NothingToResume", "TrainConfig"]



class NothingToResume(Exception):
    pass


def run_cycle(home: Home, config: TrainConfig, resume: bool = False) -> dict | None:
    """Train, gate, publish and (policy allowing) promote one adapter; returns its row (on
    the main process). Raises NotEnoughData, having changed nothing, when the feedback is too
    thin, FeedbackRefused (the run recorded with its reason and no adapter, nothing trained)
    when the base model cannot read it, lock.Busy when another run holds the lock,
    NothingToResume for a --resume with no interrupted run."""
    from accelerate import PartialState
    init_db(home)
    device, _ = models.pick_device()
    models.quantization_config(config.quantize, device)  # no GPU for QLoRA: say so first
    state = PartialState(cpu=device == "cpu")
    main = state.is_main_process
    with ExitStack() as held:
        outcome: TrainingPlan | Exception | None = None
        if main:
            try:
                held.enter_context(lock.training_lock(home))
                outcome = prepare(home, config, resume)
            except Exception as exc:  # every process must hear of it, or the others hang
                stop_reporting()
                outcome = exc
        outcome = _from_main(state, outcome)
        if isinstance(outcome, Exception):
            raise outcome
        plan = outcome
        config = from_dict(plan.config)
        run_id, row = plan.run_id, None
        if main:
            report_to(home, run_id)  # the gate's bars show on the admin page
        try:
            started = time.perf_counter()
            final, stage_metrics, histories = train(home, plan, config, device)
            if main:
                print(f"Trained in {time.perf_counter() - started:.1f} s", flush=True)
            state.wait_for_everyone()
            if main:
                row = publish(home, plan, config, final, stage_metrics, histories)
        except Exception as exc:
            if main:
                _discard_unregistered(home, plan.adapter_id)
                with open_db(home) as db:
                    runs.fail(db, run_id, f"{type(exc).__name__}: {exc}")
            raise
        except BaseException:  # killed or interrupted: left resumable
            if main:
                print("\nInterrupted; continue with: flywheel train --resume", flush=True)
            raise
        finally:
            stop_reporting()
        state.wait_for_everyone()
    return row


def _discard_unregistered(home: Home, adapter_id: str) -> None:
    """Remove a failed run's adapter folder unless the registry already holds it."""
    shutil.rmtree(home.staging_dir / adapter_id, ignore_errors=True)
    with open_db(home) as db:
        registered = adapters.get(db, adapter_id) is not None
    if not registered:
        shutil.rmtree(home.adapters_dir / adapter_id, ignore_errors=True)


def _from_main(state, value):
    """`value` as the main process has it, on every process."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list
    return broadcast_object_list([value], from_process=0)[0]


# ---- prepare ---------------------------------------------------------------------------------

def prepare(home: Home, config: TrainConfig, resume: bool) -> TrainingPlan:
    """A new run's data and plan, written under runs/<id>/; or the interrupted run's plan.
    The caller holds the lock, so every run still marked running has died."""
    with open_db(home) as db:
        stale = runs.unfinished(db)
    if resume:
        if not stale:
            raise NothingToResume("no interrupted training run to resume")
        run, older = stale[0], stale[1:]
        for other in older:
            _abandon(home, other, "interrupted; a newer interrupted run was resumed instead")
        plan_file = home.runs_dir / run["id"] / "plan.json"
        if plan_file.is_file():
            plan = TrainingPlan.load(plan_file)
            print(f"Resuming {run['id']} ({plan.method}); {plan.reason}", flush=True)
            return plan
        print(f"Resuming {run['id']}: it stopped before its data was written; "
              "preparing the data again", flush=True)
        return new_plan(home, from_dict(run["config"]), run_id=run["id"])
    for run in stale:
        _abandon(home, run, "interrupted and not resumed: a new run started instead")
    return new_plan(home, config)


def new_plan(home: Home, config: TrainConfig, run_id: str | None = None) -> TrainingPlan:
    """Build the datasets, pick the method, start the run (or refill `run_id`, an
    interrupted run's row) and write everything the training processes read."""
    base = models.resolve(config.model, home)
    with open_db(home) as db:
        last = runs.last_started(db)
        new = store.feedback_since(db, last["started_at"] if last else None)
        active = adapters.active(db)
    if run_id is None and new < config.min_new_feedback:
        raise NotEnoughData(f"only {new} new ratings, corrections and picks since "
                            f"{last['id'] if last else 'the start'}; need "
                            f"{config.min_new_feedback} to train tonight")
    start = None
    if config.start_from == "active":
        if active is None:
            print("No adapter is active: training from the base model.", flush=True)
        else:
            start = active
    exclude = _trained_by(home, start["run_id"]) if start and start["run_id"] else set()
    fresh = run_id is None
    with open_db(home) as db:  # the row first: the admin page follows the data phase too
        if fresh:
            run_id = runs.start(db, base_model=base.name, method="", config=as_dict(config),
                                manifest={}, start_from=start["id"] if start else None)
        runs.set_progress(db, run_id, phase="data")
    report_to(home, run_id)  # the data phase's bars and the anchor answers' show there
    try:
        sets, manifest = gather(home, base, config, exclude=exclude)
        every_pair = sets["dpo"]["train"]  # what the gate's judge learns from
        sets["dpo"]["train"], left_out_pairs = methods.trainable_pairs(every_pair, config)
        if left_out_pairs:
            manifest["dropped"]["dpo: the chosen answer adds words (training split; "
                                "dpo.skip_if_added_words)"] = left_out_pairs
        kto = sets["kto"]["train"] + sets["kto"]["validation"]
        sizes = {fmt: len(sets[fmt]["train"]) + len(sets[fmt]["validation"])
                 for fmt in ("dpo", "kto")}
        sizes |= {f"{fmt}_train": len(sets[fmt]["train"]) for fmt in ("dpo", "kto")}
        # The validation pairs stay whole (DPO's eval loss, the gate); counted for the method
        # are those DPO would learn from, in both splits alike.
        validation_left_out = methods.trainable_pairs(sets["dpo"]["validation"], config)[1]
        sizes["dpo"] -= validation_left_out
        sizes["sft"] = manifest["sft_feedback"]
        sizes["kto_down"] = sum(not e["label"] for e in kto)
        sizes["dpo_left_out"] = left_out_pairs + validation_left_out
        stages, reason = methods.pick(sizes, config)
        with open_db(home) as db:
            runs.set_manifest(db, run_id, manifest, method="+".join(stages))
        judged = {**sets, "dpo": {**sets["dpo"], "train": every_pair}}
        measured_on = gate_sets(home, base, judged, config,
                                reference=active["id"] if active else None)
        # Before any training: a night the base model cannot read is refused here.
        measured_on["unreadable_feedback"] = feedback_screen.screen(
            base, measured_on["feedback"], config.gate)
    except Exception as exc:
        stop_reporting()
        with open_db(home) as db:
            if fresh and isinstance(exc, NotEnoughData):  # not a run: nothing was changed
                runs.discard(db, run_id)
            elif isinstance(exc, FeedbackRefused):  # a decision, as a gate's refusal is
                runs.finish(db, run_id, metrics={"refused_before_training": str(exc)},
                            adapter_id=None)
                runs.set_progress(db, run_id, phase="done", refused_before_training=True,
                                  decision=f"refused before training: {exc}")
            else:
                runs.fail(db, run_id, f"{type(exc).__name__}: {exc}")
        raise
    print(f"Method: {'+'.join(stages).upper()}. {reason}", flush=True)
    if start:
        print(f"Starting from the active adapter {start['id']}, on {manifest['sft_feedback']} "
              f"SFT examples it has not seen.", flush=True)
    workdir = home.runs_dir / run_id
    for fmt, sides in sets.items():
        for side, rows in sides.items():
            _save_jsonl(workdir / "data" / f"{fmt}-{side}.jsonl", rows)
    _save_jsonl(workdir / REPLAY_FILE, [e for e in sets["sft"]["train"]
                                        if e["source"] not in REPLAYED])
    save_json(workdir / "data" / "gate.json", measured_on)
    plan = TrainingPlan(run_id=run_id, adapter_id=adapters.adapter_id_for_run(run_id),
                        base_name=base.name, base_folder=str(base.folder), stages=stages,
                        reason=reason, start_from=start["id"] if start else None,
                        start_path=start["path"] if start else None, config=as_dict(config))
    plan.save(workdir / "plan.json")  # last: its presence means the data is complete
    return plan


def _abandon(home: Home, run: dict, why: str) -> None:
    with open_db(home) as db:
        runs.fail(db, run["id"], why)
    _discard_unregistered(home, adapters.adapter_id_for_run(run["id"]))
    for checkpoints in (home.runs_dir / run["id"]).glob("*/checkpoints"):
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"Run {run['id']} marked failed: {why}", flush=True)


def _trained_by(home: Home, run_id: str) -> set[str]:
    """Hashes of the examples a run trained on (to continue its adapter on new ones only)."""
    with open_db(home) as db:
        run = runs.get(db, run_id)
    if run is None:
        return set()
    return {e["sha256"] for fmt in run["manifest"].get("formats", {}).values()
            for e in fmt.get("examples", []) if e["split"] == "train"}


# ---- train -----------------------------------------------------------------------------------

def train(home: Home, plan: TrainingPlan, config: TrainConfig, device: str):
    """Every stage of the plan, skipping finished ones and resuming a cut one. Returns the
    last stage's adapter folder, each stage's metrics and log history."""
    base = plan.base
    workdir = home.runs_dir / plan.run_id
    adapter_path = plan.start_path
    model = tokenizer = None
    metrics, histories = [], {}
    for number, method in enumerate(plan.stages, 1):
        stage_dir = workdir / f"{number}-{method}"
        done = methods.stage_result(stage_dir)
        if done is None:
            if model is None:
                model, tokenizer = _load_for_training(base, config, adapter_path, device)
            rows = {side: _load_jsonl(workdir / "data" / f"{method}-{side}.jsonl")
                    for side in ("train", "validation")}
            progress = ProgressToDatabase(home, plan.run_id,
                                          f"{number}/{len(plan.stages)} {method}")
            model, *done = methods.train_stage(method, model, tokenizer, rows["train"],
                                               rows["validation"], config, stage_dir, device,
                                               callbacks=[progress])
        else:
            model = None  # the next stage (if any) starts from this one's saved adapter
            print(f"Stage {number} ({method.upper()}) already finished", flush=True)
        metrics.append(done[0])
        histories[f"{number}-{method}"] = done[1]
        adapter_path = str(stage_dir / "final")
    return Path(adapter_path), metrics, histories


def _load_for_training(base: models.BaseModel, config: TrainConfig, adapter_path: str | None,
                       device: str):
    """The base model (4-bit for QLoRA if asked), with `adapter_path`'s adapter as the
    trainable starting point when given."""
    model, tokenizer = models.load(base, device=device, quantize=config.quantize)
    if config.quantize:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing is not False)
    model.train()
    if adapter_path:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    return model, tokenizer


# ---- gate and publish ------------------------------------------------------------------------

def publish(home: Home, plan: TrainingPlan, config: TrainConfig, final: Path, stage_metrics: list,
            histories: dict) -> dict:
    """Gate the finished adapter, then publish it and apply the promotion policy in one
    transaction. Each step is skipped when a resumed run finds it done."""
    run_id, adapter_id = plan.run_id, plan.adapter_id
    workdir = home.runs_dir / run_id
    with open_db(home) as db:
        existing = adapters.get(db, adapter_id)
    if existing:  # published just before a crash; only the run's row was left to finish
        _finish_run(home, run_id, existing["metrics"], adapter_id)
        return existing
    staged = home.staging_dir / adapter_id
    if not (staged / "adapter_config.json").is_file() and not (
            home.adapters_dir / adapter_id / "adapter_config.json").is_file():
        with folder_atomically(staged) as tmp:
            shutil.copytree(final, tmp, dirs_exist_ok=True)
    plot = plot_losses(histories, workdir / "loss.png", f"{run_id}: {plan.method}")
    gate_file = workdir / "gate.json"
    if gate_file.is_file():
        report = json.loads(gate_file.read_text())
    else:
        with open_db(home) as db:
            runs.set_progress(db, run_id, phase="evaluating")
        gated = staged if staged.is_dir() else home.adapters_dir / adapter_id
        report = run_gate(home, plan, config, gated)
        if "stage" in report:  # an earlier stage passed: it is what gets published
            with folder_atomically(gated, replace=True) as tmp:
                shutil.copytree(workdir / report["stage"] / "final", tmp, dirs_exist_ok=True)
        save_json(gate_file, report)
    print_gate(report)
    if "stage" in report:
        kept = int(report["stage"].split("-")[0])
        stage_metrics = stage_metrics[:kept]
        print(f"The last stage was refused; publishing stage {report['stage']}", flush=True)
    method = "+".join(plan.stages[:len(stage_metrics)]) if stage_metrics else plan.method
    metrics = {"method": method, "stages": stage_metrics,
               "steps": sum(m.get("steps", 0) for m in stage_metrics),
               "examples": sum(m.get("examples", 0) for m in stage_metrics),
               "train_loss": stage_metrics[-1].get("train_loss") if stage_metrics else None,
               "loss_curve": [x for m in stage_metrics for x in m.get("loss_curve", [])],
               "loss_plot": str(plot), "gate": report}
    passed = report["verdict"] == "pass"
    with open_db(home) as db:
        runs.set_progress(db, run_id, phase="publishing")
        with transaction(db):
            row = adapters.publish(db, home, adapter_id, base_model=plan.base_name,
                                   method=metrics["method"], run_id=run_id,
                                   parent_id=plan.start_from, metrics=metrics,
                                   status="candidate" if passed else "rejected")
            if passed and config.promotion == "auto":
                row = adapters.promote(db, adapter_id, reason=f"gate passed in {run_id}")
                decision = "promoted: the server swaps it in"
            elif passed and config.ab_share:
                ab.start(db, adapter_id, config.ab_share, reason=f"gate passed in {run_id}")
                decision = (f"a candidate in an A/B split: {config.ab_share:.0%} of new "
                            "conversations; promote it with flywheel adapters promote")
            elif passed:
                decision = ("a candidate waiting for an admin (promotion policy manual): "
                            f"flywheel adapters promote {adapter_id}")
            else:
                decision = "rejected: the server keeps what it serves now"
            runs.finish(db, run_id, metrics=metrics, adapter_id=adapter_id)
            runs.set_progress(db, run_id, phase="done", decision=decision)
    for checkpoints in workdir.glob("*/checkpoints"):
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"Adapter {adapter_id}: {decision}. Loss curves: {plot}", flush=True)
    return row


def _finish_run(home: Home, run_id: str, metrics: dict, adapter_id: str) -> None:
    with open_db(home) as db:
        if runs.get(db, run_id)["status"] == "running":
            runs.finish(db, run_id, metrics=metrics, adapter_id=adapter_id)


def run_gate(home: Home, plan: TrainingPlan, config: TrainConfig,
             candidate: Path) -> GateReport:
    """Load the base model with the candidate (and the active adapter as the reference, if
    any) and evaluate."""
    from peft import PeftModel

    from trainer import gate
    base = plan.base
    sets = json.loads((home.runs_dir / plan.run_id / "data" / "gate.json").read_text())
    with open_db(home) as db:
        active = adapters.active(db)
    print(f"Evaluating {plan.adapter_id} against "
          f"{active['id'] if active else 'the base model'} ...", flush=True)
    model, tokenizer = models.load(base)
    model = PeftModel.from_pretrained(model, str(candidate), adapter_name="candidate")
    if active:
        model.load_adapter(active["path"], adapter_name="reference")
    for stage in earlier_stages(plan, config):
        model.load_adapter(str(home.runs_dir / plan.run_id / stage / "final"), adapter_name=stage)
    # The active adapter's figures on the fixed sets, from the gate that passed it, when that
    # gate measured the same sets the same way.
    passed = ((active or {}).get("metrics") or {}).get("gate") or {}
    known = (passed["figures"]["candidate"]
             if passed.get("fixed_sets") == gate.fixed_sets_key(sets, config.gate) else None)
    return gate.evaluate(model, tokenizer, sets, config.gate, has_reference=active is not None,
                         reference_name=active["id"] if active else "base model",
                         fallbacks=earlier_stages(plan, config), reference_known=known)


def earlier_stages(plan: TrainingPlan, config: TrainConfig) -> tuple[str, ...]:
    """The folders of the run's stages before the last, the latest first: what the gate falls
    back to when the last stage's adapter is refused."""
    if not config.gate.fall_back_to_earlier_stage:
        return ()
    return tuple(f"{n}-{m}" for n, m in reversed(list(enumerate(plan.stages, 1))[:-1]))


def print_gate(report: GateReport) -> None:
    """Print the gate's report: each check passed, failed or skipped, and the verdict."""
    from trainer.gate import describe
    reused = (", its known facts, counterfactual pairs and anchor loss read from the gate "
              "that passed it"
              if report.get("reference_fixed_reused") else "")
    print(f"Evaluation gate (reference: {report['reference']}{reused}, "
          f"{report.get('seconds', '?')} s):", flush=True)
    for name, check in report["checks"].items():
        mark = "pass" if check["passed"] else "FAIL"
        print(f"  {mark}  {describe(name, check)}  [{check['n']} {check['unit']}]", flush=True)
        for line in check.get("moved", [])[:3]:  # bias: the pairs that moved most
            print(f"        {line}", flush=True)
    why = {"judge": report.get("judge", {}).get("skipped"),
           "known_facts": "the reference answers none of the known facts (or none asked)",
           "fact_margins": "no known facts asked",
           "over_refusal": "no counterfactual pairs asked"}
    for name in report["skipped"]:
        reason = why.get(name) or "no held-out data for it"
        print(f"  skip  {name.replace('_', ' ')}: {reason}", flush=True)
    for refused in report.get("refused", []):
        print(f"  Adapter {refused['adapter']} was {refused['reason']}", flush=True)
    print(f"Verdict: {report['verdict']}. {report['reason']}", flush=True)


def _save_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


"""A/B splits: a share of new conversations is answered by a candidate adapter while the rest
get the active one, so thumbs-up rates can be compared before a promotion.

Which side a conversation is on is a hash of its id, so it is stable for the conversation's
whole life without storing anything; the answers' `adapter_id` says who answered.
"""

from dataclasses import dataclass, field

import sqlite_utils
from scipy import stats

from storage import buckets, review
from storage.db import present, transaction, utc_now


@dataclass
class ABConfig:
    """`flywheel adapters ab`'s settings: each default and help line here, and nowhere else."""
    share: float = field(default=0.2, metadata={"help": (
            "share of new conversations for the candidate (default {default})")})


def start(db: sqlite_utils.Database, candidate_id: str, share: float, reason: str = "") -> dict:
    """Send `share` (0 < share < 1) of new conversations to `candidate_id`; ends any split
    that is running. The candidate must be a servable candidate (not active or rejected)."""
    if not 0 < share < 1:
        raise ValueError(f"the A/B share must be between 0 and 1, not {share}")
    with transaction(db):
        row = db.execute("SELECT status FROM adapters WHERE id = ?", [candidate_id]).fetchone()
        if row is None:
            raise KeyError(f"no adapter {candidate_id}")
        if row[0] != "candidate":
            raise ValueError(f"{candidate_id} is {row[0]}; only a candidate can be A/B tested")
        stop(db, reason=f"replaced by a split for {candidate_id}")
        db.table("ab_tests").insert({"candidate_id": candidate_id, "share": share,
                                     "reason": reason})
    return present(current(db), f"A/B split for {candidate_id}")


def stop(db: sqlite_utils.Database, reason: str = "") -> dict | None:
    """End the running split (if any); returns it."""
    running = current(db)
    if running:
        db.execute("UPDATE ab_tests SET ended_at = ?, reason = ? WHERE id = ?",
                   [utc_now(), reason or running["reason"], running["id"]])
    return running


def current(db: sqlite_utils.Database) -> dict | None:
    """The split running now, or None."""
    rows = list(db["ab_tests"].rows_where("ended_at IS NULL"))
    return dict(rows[0]) if rows else None


def in_candidate_arm(conversation_id: str, share: float) -> bool:
    """Whether a conversation belongs to the candidate's share (stable: a hash of its id)."""
    return buckets.position(f"ab:{conversation_id}") < share


def report(db: sqlite_utils.Database, test: dict | None = None) -> dict | None:
    """Thumbs up and down, and the up rate, of each arm's answers given since the split
    started (the candidate's vs everyone else's): what the admin page compares. The counts
    are `review.arm_ratings` over the split's time window."""
    test = test or current(db)
    if test is None:
        return None
    arms = {"candidate": {"adapter": test["candidate_id"], "answers": 0, "up": 0, "down": 0},
            "control": {"adapter": "others", "answers": 0, "up": 0, "down": 0}}
    for adapter, counts in review.arm_ratings(db, test["started_at"], test["ended_at"]).items():
        arm = arms["candidate" if adapter == test["candidate_id"] else "control"]
        for key in ("answers", "up", "down"):
            arm[key] += counts[key]
    for arm in arms.values():
        rated = arm["up"] + arm["down"]
        arm["up_rate"] = round(arm["up"] / rated, 3) if rated else None
        arm["interval"] = wilson(arm["up"], rated)
    return {"test": test, **arms, "p_value": difference_p_value(arms["candidate"],
                                                                 arms["control"])}


def wilson(up: int, rated: int, confidence: float = 0.95) -> list[float] | None:
    """The Wilson score interval of a thumbs-up rate (scipy), [low, high]; None unrated."""
    if not rated:
        return None
    ci = stats.binomtest(up, rated).proportion_ci(confidence_level=confidence,
                                                  method="wilson")
    return [round(ci.low, 3), round(ci.high, 3)]


def difference_p_value(a: dict, b: dict) -> float | None:
    """How likely a difference in up rates this large is by chance alone (Fisher's exact
    test on the 2x2 table of thumbs); None until both arms are rated."""
    if not (a["up"] + a["down"]) or not (b["up"] + b["down"]):
        return None
    return round(float(stats.fisher_exact([[a["up"], a["down"]], [b["up"], b["down"]]])[1]), 4)


def verdict(report: dict, alpha: float = 0.05) -> str:
    """One line on whether the arms' up rates differ beyond chance."""
    p = report["p_value"]
    if p is None:
        return "not enough ratings yet to compare the arms"
    if p >= alpha:
        return f"no significant difference yet (p = {p:.3f})"
    better = ("candidate" if report["candidate"]["up_rate"] > report["control"]["up_rate"]
              else "control")
    return f"the {better} is better beyond chance (p = {p:.3f})"

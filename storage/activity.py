"""What the admin's plots show, on one time axis: each adapter's thumbs-up rate with its 95%
interval, answers and feedback per day (or per period of several days), and the promotions
and rollbacks between them.

Everything is read from daily counts that triggers keep current on write (`thumbs_daily`,
`feedback_daily`: storage/db.py), so a year of history is a few hundred rows.
"""

import math
from dataclasses import dataclass, field
from datetime import date

import sqlite_utils

from storage import BASE
from storage.ab import wilson


@dataclass
class Activity:
    """The plots' data. `period` days per point: the shortest that keeps every series at
    `max_points` points or fewer."""
    period: int = 1
    thumbs: list[dict] = field(default_factory=list)  # start, adapter, up, down, rate, low, high
    volume: list[dict] = field(default_factory=list)      # start, answers, thumbs, score, ...
    promotions: list[dict] = field(default_factory=list)  # at, action, adapter


def _bucket(column: str) -> str:
    """SQL: the first day of the period that `column` (a YYYY-MM-DD day) falls in."""
    return (f"date(:first, '+' || (CAST((julianday({column}) - julianday(:first)) / :period "
            f"AS INTEGER) * :period) || ' days')")


def over_time(db: sqlite_utils.Database, max_points: int = 300) -> Activity:
    """All three plots' data, bucketed alike so that they share a time axis."""
    first, last = db.execute(
        """SELECT MIN(day), MAX(day) FROM (SELECT day FROM thumbs_daily
                                           UNION ALL SELECT day FROM feedback_daily)""").fetchone()
    if first is None:
        return Activity()
    series = db.execute("SELECT COUNT(DISTINCT adapter) FROM thumbs_daily").fetchone()[0]
    span = (date.fromisoformat(last) - date.fromisoformat(first)).days + 1
    period = max(1, math.ceil(span * max(series, 1) / max_points))
    window = {"first": first, "period": period}

    thumbs = []
    for adapter, start, up, down in db.execute(
            f"""SELECT adapter, {_bucket('day')} AS start, SUM(up), SUM(down) FROM thumbs_daily
                WHERE up + down > 0 GROUP BY adapter, start ORDER BY start, adapter""", window):
        low, high = wilson(up, up + down) or (None, None)  # never None: up + down > 0
        thumbs.append({"start": start, "adapter": adapter or BASE, "up": up, "down": down,
                       "rate": up / (up + down), "low": low, "high": high})

    volume: dict[str, dict] = {}
    for start, answers in db.execute(
            f"""SELECT {_bucket('day')} AS start, SUM(answers) FROM thumbs_daily
                GROUP BY start""", window):
        volume.setdefault(start, {"start": start})["answers"] = answers
    for start, kind, count in db.execute(
            f"""SELECT {_bucket('day')} AS start, kind, SUM(count) FROM feedback_daily
                GROUP BY start, kind""", window):
        volume.setdefault(start, {"start": start})[kind] = count
    kinds = ("answers", "thumbs", "score", "correction", "comparison")
    rows = [{kind: 0 for kind in kinds} | row for _, row in sorted(volume.items())]

    promotions = [{"at": at, "action": action, "adapter": adapter or BASE}
                  for at, action, adapter in db.execute(
                      """SELECT created_at, action, adapter_id FROM promotions
                         WHERE created_at >= :first ORDER BY created_at""", window)]
    return Activity(period, thumbs, rows, promotions)

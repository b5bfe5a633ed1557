"""A reference, computed in Python from the raw ratings, corrections and flags, for what the
database keeps per answer (its judgement) and per day (the thumbs counts); the judgement and
review-queue tests check the stored rows against it."""

CURATORS = ("curator", "admin")


def reference(db) -> dict[str, dict]:
    """Per answer, from the raw rows: the rating that counts (a curator's, an admin's or the
    local owner's over a user's, latest among equals, disabled raters ignored), the latest
    score and correction, the sorted flags."""
    people = {u["id"]: u for u in db["users"].rows}
    out = {m["id"]: {"rating": None, "curator": False, "score": None, "correction": None,
                     "flags": None} for m in db["messages"].rows_where("role = 'assistant'")}
    for r in db["ratings"].rows_where(order_by="id"):
        rater = people.get(r["rater_id"])
        if rater and rater["disabled"]:
            continue
        entry = out[r["message_id"]]
        curator = rater is None or rater["role"] in CURATORS
        if r["rating"] and (curator or not entry["curator"]):
            entry["rating"], entry["curator"] = r["rating"], curator
        if r["score"]:
            entry["score"] = r["score"]
    for c in db["corrections"].rows_where(order_by="id"):
        out[c["message_id"]]["correction"] = c["id"]
    for f in db["flags"].rows:
        kinds = set((out[f["message_id"]]["flags"] or "").split(",")) - {""} | {f["kind"]}
        out[f["message_id"]]["flags"] = ",".join(sorted(kinds))
    return out


def stored(db) -> dict[str, dict]:
    return {j["message_id"]: {"rating": j["rating"], "curator": bool(j["by_curator"])
                              if j["rating"] else False, "score": j["score"],
                              "correction": j["correction_id"], "flags": j["flags"]}
            for j in db["judgements"].rows}


def daily_reference(db) -> dict[tuple[str, str], tuple[int, int, int]]:
    counts: dict = {}
    ref = reference(db)
    for m in db["messages"].rows_where("role = 'assistant'"):
        key = (m["adapter_id"] or "", m["created_at"][:10])
        n, up, down = counts.get(key, (0, 0, 0))
        rating = ref[m["id"]]["rating"]
        counts[key] = (n + 1, up + (rating == "up"), down + (rating == "down"))
    return counts


def daily_stored(db) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(r["adapter"], r["day"]): (r["answers"], r["up"], r["down"])
            for r in db["thumbs_daily"].rows if r["answers"]}

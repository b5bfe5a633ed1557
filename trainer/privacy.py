"""Scrubbing personal data out of training text, each find replaced by a typed placeholder.

    [EMAIL]   e-mail addresses
    [SECRET]  API keys and tokens   detect-secrets' detectors (AWS, GitHub, GitLab, OpenAI,
                                    Slack, Stripe, JWT, private keys...), plus long
                                    high-entropy letter-and-digit tokens such as `sk-...`
    [CARD]    payment card numbers  13 to 19 digits that pass the Luhn check (python-stdnum)
    [IP]      IPv4 and IPv6         candidates confirmed by the standard `ipaddress` module
    [PHONE]   phone numbers         libphonenumber's matcher (phonenumbers), valid numbers only

Everything runs offline, in the order above: e-mails first (a domain can look like a token),
then secrets (a token can hold digits that look like a phone), phones last (a card or an IP
is not a phone).
"""

import ipaddress
import math
import re
from collections import Counter

import phonenumbers
from stdnum import luhn

PLACEHOLDERS = {"secret": "[SECRET]", "email": "[EMAIL]", "card": "[CARD]", "ip": "[IP]",
                "phone": "[PHONE]"}

_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                    r"\.(?:[A-Za-z]{2,}|xn--[A-Za-z0-9-]+)\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")
_TOKEN = re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{24,}(?![A-Za-z0-9_\-])")


def _detectors():
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    skip = {"Base64 High Entropy String", "Hex High Entropy String", "Secret Keyword",
            "Public IP (ipv4)", "Basic Auth Credentials"}  # noisy in prose, or ours to find
    return [cls() for name, cls in get_mapping_from_secret_type_to_class().items()
            if name not in skip]


_SECRET_DETECTORS = None
_ANY_SECRET = None  # every detector's patterns in one regex: most texts match none of them
# Four detectors look for credential assignments ("cloudant_password = '...'"); each of their
# patterns needs one of these words, so only a text holding one is searched with them: they
# were most of the scrubbing time, and almost no text has these words.
_ASSIGNMENT_DETECTORS = {"IbmCloudIamDetector", "IbmCosHmacDetector", "SoftlayerDetector",
                         "CloudantDetector"}
_ASSIGNMENT_HINT = re.compile(r"key|pwd|pw|pass|token|cloudant|softlayer", re.IGNORECASE)


def _any_secret_pattern(detectors) -> tuple[re.Pattern, re.Pattern]:
    """(token patterns, assignment patterns), each in one regex. One pass over a text tells
    whether any detector could fire; only then do they all run, line by line, as
    detect-secrets runs them (two dozen detectors' regexes on every line cost more than the
    rest of the pipeline)."""
    parts: dict[bool, list[str]] = {False: [], True: []}
    for detector in detectors:
        for pattern in getattr(detector, "denylist", ()):
            flags = "i" if pattern.flags & re.IGNORECASE else ""
            body = re.sub(r"\(\?P<\w+>", "(", pattern.pattern)  # names could clash
            parts[type(detector).__name__ in _ASSIGNMENT_DETECTORS].append(
                f"(?{flags}:{body})" if flags else f"(?:{body})")
    return tuple(re.compile("|".join(parts[k]) or "(?!)", re.MULTILINE) for k in (False, True))


def _may_hold_secret(text: str) -> bool:
    tokens, assignments = _ANY_SECRET
    return bool(tokens.search(text)
                or (_ASSIGNMENT_HINT.search(text) and assignments.search(text)))


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _looks_like_token(text: str) -> bool:
    return (any(c.isdigit() for c in text) and any(c.isalpha() for c in text)
            and _entropy(text) >= 3.5)


def _secrets(text: str) -> list[str]:
    global _SECRET_DETECTORS, _ANY_SECRET
    if _SECRET_DETECTORS is None:
        _SECRET_DETECTORS = _detectors()
        _ANY_SECRET = _any_secret_pattern(_SECRET_DETECTORS)
    found = set()
    lines = (text.splitlines() or [text]) if _may_hold_secret(text) else []
    for line in lines:
        for detector in _SECRET_DETECTORS:
            for secret in detector.analyze_line(filename="feedback.txt", line=line):
                if secret.secret_value and len(secret.secret_value) >= 8:
                    found.add(secret.secret_value)
    found |= {m.group() for m in _TOKEN.finditer(text) if _looks_like_token(m.group())}
    return sorted(found, key=len, reverse=True)


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
        return True
    except ValueError:
        return False


def scrub(text: str, region: str = "US") -> tuple[str, Counter]:
    """`text` with personal data replaced by placeholders, and how many of each kind."""
    counts: Counter = Counter()

    def replace(pattern_or_values, kind: str, keep=lambda s: True) -> None:
        nonlocal text
        if isinstance(pattern_or_values, re.Pattern):
            def sub(match: re.Match) -> str:
                if not keep(match.group()):
                    return match.group()
                counts[kind] += 1
                return PLACEHOLDERS[kind]
            text = pattern_or_values.sub(sub, text)
        else:
            for value in pattern_or_values:
                n = text.count(value)
                if n:
                    counts[kind] += n
                    text = text.replace(value, PLACEHOLDERS[kind])

    replace(_EMAIL, "email")
    replace(_secrets(text), "secret")
    replace(_CARD, "card", lambda s: luhn.is_valid(re.sub(r"\D", "", s)))
    replace(_IPV4, "ip", _is_ip)
    replace(_IPV6, "ip", lambda s: s.count(":") >= 2 and _is_ip(s))
    phones = [m.raw_string for m in phonenumbers.PhoneNumberMatcher(
        text, region, leniency=phonenumbers.Leniency.VALID)]
    replace(sorted(set(phones), key=len, reverse=True), "phone")
    return text, counts


def scrub_turns(turns: list[dict], counts: Counter) -> list[dict]:
    """Scrub every message's content, adding to `counts`."""
    out = []
    for turn in turns:
        clean, found = scrub(turn["content"])
        counts.update(found)
        out.append({**turn, "content": clean})
    return out

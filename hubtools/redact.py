"""Keep secrets out of cards, logs and reproduction commands: swap them for `<REDACTED>`; and paths of
this machine out of published commands (`portable_path`).

A name counts as secret when it contains `secret`, `password`/`passwd`, `api_key`/`apikey`, or ends
in a `token` component (`HF_TOKEN`, `--hub-token`). Credentials in a URL (`https://user:pass@host`,
as a judge endpoint may carry them) are secret too. Names merely mentioning tokens
(`max_token_length`) or tokenizer special tokens (`pad_token`, `eos_token`) are not secrets: a
reproduction command must keep them.
"""

from __future__ import annotations

import re
from pathlib import Path

from hubtools import PROJECT
PLACEHOLDER = "<REDACTED>"

_SECRET_NAME = (r"(?:[\w.-]*?(?:secret|passw(?:or)?d|api[_-]?key)[\w.-]*"
                r"|(?:[\w.-]*[_.-])?(?<!(?:pad|eos|bos|unk|sep|cls)[_-])(?<!mask[_-])token)")
_ASSIGNMENT = re.compile(
    rf"""(?<![\w.-])(?P<key>(?P<dash>--?)?{_SECRET_NAME}["']?)
    (?P<sep>(?(dash)(?:=|[ \t]+(?:\\\r?\n[ \t]*)?)|[ \t]*[=:])[ \t]*)
    (?P<val>"[^"\n]*"|'[^'\n]*'|(?!--)[^\s"'`,;]+)""", re.IGNORECASE | re.VERBOSE)
_BARE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b|\bsk-[A-Za-z0-9_-]{16,}|(?<=\bBearer )[^\s\"'`]+",
                   re.IGNORECASE)
_FLAG_NAME = re.compile(rf"--?{_SECRET_NAME}", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@\"'`]+@")


def _assignment(m: re.Match) -> str:
    val = m["val"]
    if val.strip("\"'").startswith("$"):  # an env-var reference ($HF_TOKEN) is not the secret itself
        return m[0]
    quote = val[0] if val[0] in "\"'" else ""
    return f"{m['key']}{m['sep']}{quote}{PLACEHOLDER}{quote}"


def redact(text: str) -> str:
    """Replace secret values (HF tokens, `sk-` keys, secret flags/env vars/YAML keys, Bearer, URL
    credentials) in `text`."""
    return _URL_CREDENTIALS.sub(f"{PLACEHOLDER}@", _BARE.sub(PLACEHOLDER, _ASSIGNMENT.sub(_assignment, text)))


def redact_argv(argv: list[str]) -> list[str]:
    """`redact` for an argv list, where a secret flag's value is the next item (`--hub_token X`)."""
    out = [redact(a) for a in argv]
    for i in range(len(out) - 1):
        if _FLAG_NAME.fullmatch(argv[i]) and not argv[i + 1].startswith(("--", "$")):
            out[i + 1] = PLACEHOLDER
    return out


def redact_data(obj, key: str | None = None):
    """`redact` every string in nested dicts/lists; a value under a secret key is dropped whole."""
    if isinstance(obj, dict):
        return {k: redact_data(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_data(v) for v in obj]
    if key is not None and obj is not None and re.fullmatch(_SECRET_NAME, key, re.IGNORECASE):
        return PLACEHOLDER
    return redact(obj) if isinstance(obj, str) else obj


def portable_path(value: str, elsewhere: str = "path/to") -> str:
    """A path as a published command can show it: relative ones as given, absolute ones inside the project
    relative to it, any other `<elsewhere>/<name>` — a placeholder for the reader's own, and no user name
    or folder layout of this machine in a card."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        return value
    if path.resolve().is_relative_to(PROJECT):
        return path.resolve().relative_to(PROJECT).as_posix()
    return f"{elsewhere}/{path.name}"

"""Filter rules: which entries of SRC the migration leaves out, with rsync's meaning.

A rule is `- PATTERN` (exclude) or `+ PATTERN` (include); the rules form one ordered
list and the first rule that matches an entry decides, as rsync's do. Patterns mean
what rsync's man page (PATTERN MATCHING RULES) says they mean: a leading `/` anchors
at SRC, a trailing `/` matches directories only, `*` and `?` stay inside one path
component, `**` crosses them, `[...]` is a class, a trailing `dir/***` matches the
directory and everything under it, a backslash escapes a wildcard only in a pattern
that has one; a pattern with an inner `/` or a `**` is matched against the end of
the path (at a component boundary; from the start when anchored or when it starts
with `**`), any other against the name alone.

Every rule is compiled into a regular expression over the entry's whole path
relative to SRC, and the rules that apply to files (a directory-only rule does not)
into one alternation per kind, so the walk asks one `fullmatch` per entry whatever
the number of rules; which group matched names the rule. tests/test_filters.py
checks the rules against rsync itself.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from enum import Enum

from . import defaults
from .errors import UsageError


class Sign(str, Enum):
    EXCLUDE = "-"
    INCLUDE = "+"


@dataclass(frozen=True)
class Rule:
    sign: Sign
    pattern: str        # as given (a name that is not UTF-8: surrogateescape)

    def __str__(self) -> str:
        """rsync's own filter syntax, as `--filter` takes it and the ledger keeps it."""
        return f"{self.sign.value} {self.pattern}"


_LONG = {"exclude": Sign.EXCLUDE, "include": Sign.INCLUDE}


def parse_filter(text: str) -> Rule:
    """One `--filter` rule: `- PAT`, `+ PAT` (or `-_PAT`), `exclude PAT`, `include PAT`.
    Other rsync rules (merge files, modifiers, P/R/H/S) are refused."""
    for sign in Sign:
        if text[:1] == sign.value and text[1:2] in (" ", "_"):
            return _rule(sign, text[2:], text)
    word, _, rest = text.partition(" ")
    if word in _LONG and rest:
        return _rule(_LONG[word], rest, text)
    raise UsageError(f"--filter {text!r}: a rule is '- PATTERN' or '+ PATTERN' "
                     "(other rsync rules and modifiers are not supported)")


def parse_pattern(text: str, default: Sign) -> Rule | None:
    """An --exclude/--include pattern (or an --exclude-from line): `- ` or `+ ` in
    front chooses the kind, as in rsync; else `default`. None: `!`, which clears
    the rules before it."""
    if text == "!":
        return None
    for sign in Sign:
        if text.startswith(sign.value + " "):
            return _rule(sign, text[2:], text)
    return _rule(default, text, text)


def _rule(sign: Sign, pattern: str, given: str) -> Rule:
    if not pattern:
        raise UsageError(f"filter rule {given!r}: the pattern is empty")
    if "\0" in pattern:
        raise UsageError(f"filter rule {given!r}: a pattern cannot hold a NUL")
    return Rule(sign, pattern)


def read_exclude_from(path: str) -> list[str]:
    """The lines of an --exclude-from file, as rsync reads them: blank lines and
    whole-line comments (`#` or `;`) skipped; `-` reads standard input."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise UsageError(f"--exclude-from {path}: {e.strerror or e}") from None
    lines = []
    for raw in data.split(b"\n"):
        line = os.fsdecode(raw.rstrip(b"\r"))
        if line.strip() and line[0] not in "#;":
            lines.append(line)
    return lines


def rules_of(given: list[tuple[str, str]]) -> list[Rule]:
    """The ordered rules of the command line: (option, value) pairs in the order
    given, option one of exclude, include, filter, exclude_from."""
    rules: list[Rule] = []
    for option, value in given:
        if option == "filter":
            texts, default = [value], None
        elif option == "exclude_from":
            texts, default = read_exclude_from(value), Sign.EXCLUDE
        else:
            texts, default = [value], Sign.EXCLUDE if option == "exclude" else Sign.INCLUDE
        for text in texts:
            if default is None:
                rule = None if text == "!" else parse_filter(text)   # '!' clears, as in rsync
            else:
                rule = parse_pattern(text, default)
            if rule is None:
                rules.clear()
            else:
                rules.append(rule)
    return rules


def default_rules() -> list[Rule]:
    return [parse_filter(t) for t in defaults.DEFAULT_EXCLUDES]


# rsync's wildmatch classes ([[:alpha:]]) as regex ranges (bytes, the C locale).
_CLASSES = {b"alpha": b"a-zA-Z", b"digit": b"0-9", b"alnum": b"a-zA-Z0-9",
            b"upper": b"A-Z", b"lower": b"a-z", b"space": b" \\t\\n\\r\\f\\v",
            b"blank": b" \\t", b"xdigit": b"0-9a-fA-F", b"cntrl": b"\\x00-\\x1f\\x7f",
            b"print": b"\\x20-\\x7e", b"graph": b"\\x21-\\x7e",
            b"punct": b"!-/:-@\\[-`{-~"}


def _class(p: bytes, i: int) -> tuple[bytes, int] | None:
    """The class starting at p[i] == '[': its regex and the index after it, or None
    when it is not closed (then the '[' is literal)."""
    j = i + 1
    negate = j < len(p) and p[j] in b"!^"
    j += negate
    out, first = [], True
    while j < len(p):
        c = p[j]
        if c == ord("]") and not first:
            body = b"".join(out)
            # a class never matches '/', which separates components
            return (b"[^/" + body + b"]" if negate else b"(?!/)[" + body + b"]"), j + 1
        first = False
        if c == ord("[") and p[j + 1:j + 2] == b":":
            end = p.find(b":]", j + 2)
            if end > 0 and p[j + 2:end] in _CLASSES:
                out.append(_CLASSES[p[j + 2:end]])
                j = end + 2
                continue
        if c == ord("\\") and j + 1 < len(p):
            j += 1
            c = p[j]
        if c == ord("-") and out and j + 1 < len(p) and p[j + 1] != ord("]"):
            out.append(b"-")
        else:
            out.append(re.escape(bytes([c])))
        j += 1
    return None


def _wild(p: bytes) -> bytes:
    """A wildcard pattern as a regex."""
    out, i = [], 0
    while i < len(p):
        c = p[i]
        if c == ord("*"):
            j = i
            while j < len(p) and p[j] == ord("*"):
                j += 1
            out.append(b"[^/]*" if j - i == 1 else b".*")
            i = j
            continue
        if c == ord("?"):
            out.append(b"[^/]")
        elif c == ord("["):
            cls = _class(p, i)
            if cls is not None:
                out.append(cls[0])
                i = cls[1]
                continue
            out.append(b"\\[")
        elif c == ord("\\") and i + 1 < len(p):
            i += 1
            out.append(re.escape(p[i:i + 1]))
        else:
            out.append(re.escape(bytes([c])))
        i += 1
    return b"".join(out)


def _regexes(pattern: str) -> tuple[bytes | None, bytes, bool]:
    """The regex of a pattern for files (None: a directory-only rule) and for
    directories, and whether it matches the name alone (no inner '/' nor '**');
    else each is over the whole path relative to SRC (rsync's rule_matches)."""
    p = os.fsencode(pattern)
    dir_only = len(p) > 1 and p.endswith(b"/")
    if dir_only:
        p = p[:-1]
    anchored = p.startswith(b"/")
    wild = any(c in p for c in b"*?[")
    wild2 = wild and b"**" in p
    # A leading "**" (of the pattern as given, so not after an anchoring '/')
    # matches from the start of the path; an unanchored pattern otherwise matches
    # its end, at a component boundary.
    from_start = anchored or (wild2 and p.startswith(b"**"))
    if anchored:
        p = p[1:]
    suffix3 = wild and p.endswith(b"/***")      # dir/***: dir, and all under it
    if suffix3:
        p = p[:-4]
    body = _wild(p) if wild else re.escape(p)
    if not from_start and b"/" not in p and not wild2:
        return (None if dir_only else body), body, True
    lead = b"" if from_start else b"(?:.*/)?"
    if suffix3:
        return lead + body + b"/.*", lead + body + b"(?:/.*)?", False
    return (None if dir_only else lead + body), lead + body, False


class Filters:
    """The rules, compiled: `excluded(path, is_dir)` is the rule that leaves the
    entry out, or None. Built once per walk; one regex call per entry. When every
    rule matches names alone (the default excludes, `*.tmp`), the regexes are
    over the name (by_name), which the walk's hot loop has at hand: a quarter
    of the cost of a match over the path."""

    def __init__(self, rules: list[Rule]):
        self.rules = list(rules)
        compiled = [(rule, *_regexes(rule.pattern)) for rule in self.rules]
        self.by_name = all(name_only for *_, name_only in compiled)
        file_parts, dir_parts = [], []
        self._file_rules, self._dir_rules = [None], [None]   # group n -> rule
        for rule, for_files, for_dirs, name_only in compiled:
            lead = b"(?:.*/)?" if name_only and not self.by_name else b""
            if for_files is not None:
                file_parts.append(b"(" + lead + for_files + b")")
                self._file_rules.append(rule)
            dir_parts.append(b"(" + lead + for_dirs + b")")
            self._dir_rules.append(rule)
        flags = re.DOTALL      # names may hold a newline
        # fullmatch of the file (directory) rules, None when there is none
        self.match_file = (re.compile(b"|".join(file_parts), flags).fullmatch
                           if file_parts else None)
        self.match_dir = re.compile(b"|".join(dir_parts), flags).fullmatch if dir_parts else None

    def __bool__(self) -> bool:
        return bool(self.rules)

    def excluded(self, path: bytes, is_dir: bool) -> Rule | None:
        """The rule that excludes this entry (path relative to SRC), or None."""
        match = self.match_dir if is_dir else self.match_file
        if match is None:
            return None
        m = match(path[path.rfind(b"/") + 1:] if self.by_name else path)
        return None if m is None else self.decide(m, is_dir)

    def decide(self, m: re.Match, is_dir: bool) -> Rule | None:
        """The rule of a match of match_file (match_dir): it, when it excludes."""
        rule = (self._dir_rules if is_dir else self._file_rules)[m.lastindex]
        return rule if rule.sign is Sign.EXCLUDE else None

    def rsync_options(self) -> list[str]:
        """The rules as rsync options, in order (for the delete pass: an excluded
        name is then protected from deletion, unless --delete-excluded)."""
        return [f"--filter={r}" for r in self.rules]


@dataclass
class Choice:
    """The rules a run walks with, and whether it stores them (changed rules)."""
    rules: list[Rule]
    change: bool = False      # --change-filters: store them, a rescan applies them
    defaults: bool = False    # the default excludes are among them

    def says(self) -> list[str]:
        """The run's opening lines about its rules."""
        if not self.rules:
            return ["fleetsync: no filter rules: every entry of SRC is copied"]
        lines = ["fleetsync: filter rules (the first that matches decides): "
                 + ", ".join(repr(str(r)) for r in self.rules)]
        if self.defaults:
            lines.append("fleetsync: default excludes: " + ", ".join(
                r.pattern for r in default_rules()) + " (snapshot directories) are not "
                "copied; --no-default-excludes copies them")
        if self.change:
            lines.append("fleetsync: --change-filters: the rules change; a rescan applies "
                         "them (entries now excluded stay at DEST unless --delete "
                         "--delete-excluded)")
        return lines


def choose(given: list[Rule], no_defaults: bool, change: bool, options_given: bool,
           stored: list[str] | None, exists: bool, walk_done: bool) -> Choice:
    """The rules of this run. A new ledger takes the rules given and the default
    excludes (unless no_defaults); an existing one keeps its stored rules (None: a
    ledger made before filters, no rules) unless other rules are given, which
    --change-filters must allow. Refusals are UsageError, before anything is written."""
    wanted = given + ([] if no_defaults else default_rules())
    has_defaults = lambda rules: all(d in rules for d in default_rules())  # noqa: E731
    if not exists:
        return Choice(wanted, defaults=has_defaults(wanted))
    current = [parse_filter(r) for r in stored or []]
    if not (options_given or change) or wanted == current:
        return Choice(current, defaults=has_defaults(current))
    show = lambda rules: ", ".join(map(str, rules)) or "none"   # noqa: E731
    if not change:
        raise UsageError(f"the filter rules given ({show(wanted)}) differ from the ledger's "
                         f"({show(current)}): resume without filter options to keep them, "
                         "or add --change-filters")
    if not walk_done:
        raise UsageError("--change-filters: the walk of SRC is not finished; resume it with "
                         "its rules first, then change them")
    return Choice(wanted, change=True, defaults=has_defaults(wanted))

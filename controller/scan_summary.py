"""What `fleetsync scan` prints for a terminal: the census (ledger/census.py) as a few
lines, the same numbers as its --json."""
from __future__ import annotations

from fleetsync.ledger.sizes import show as size


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def _sizes(histogram: list[dict]) -> str:
    """Buckets by powers of two: `4 KiB-8 KiB 12`, sizes from 2^(k-1) to 2^k - 1."""
    return "; ".join(("0 B" if b["to"] == 0 else f"{size(b['from'])}-{size(b['to'] + 1)}")
                     + f" {b['files']:,}" for b in histogram) or "no files"


def lines(c: dict) -> list[str]:
    """The census, one subject a line."""
    sparse, links, odd = c["sparse"], c["hardlinks"], c["odd_names"]
    out = [f"scan of {c['src']} (ledger {c['ledger']})",
           f"  entries      {c['entries']:,}: {_n(c['files'], 'file')}, "
           f"{_n(c['dirs'], 'directory', 'directories')} (SRC included), "
           f"{_n(c['symlinks'], 'symlink')}, {_n(c['others'], 'other')} (fifos, sockets, "
           "devices)" + (f", {c['unknown_type']:,} of unknown type (an older ledger)"
                         if c["unknown_type"] else ""),
           f"  bytes        {size(c['bytes'])} ({c['bytes']:,}), "
           f"{size(c['allocated_bytes'])} allocated; {_n(sparse['files'], 'sparse file')}"
           + (f" ({size(sparse['bytes'])}, {size(sparse['allocated_bytes'])} allocated)"
              if sparse["files"] else ""),
           f"  file sizes   (from-below) {_sizes(c['size_histogram'])}"]
    if c["largest_dirs"]:
        out.append("  largest dirs " + ", ".join(
            f"{d['path']} ({d['entries']:,})" for d in c["largest_dirs"][:5]))
    if c["deepest"]:
        out.append(f"  deepest      {c['deepest']['path']} ({c['deepest']['depth']} levels)")
    out.append(f"  hard links   {_n(links['groups'], 'inode')} with several names "
               f"({links['names']:,} names)"
               + (f"; {_n(links['alone'], 'name')} whose other links are outside SRC or "
                  "excluded" if links["alone"] else ""))
    out.append(f"  odd names    {odd['not_utf8']:,} not UTF-8, {odd['newline']:,} holding a "
               "newline" + (": " + ", ".join(e["path"] for e in odd["examples"][:5])
                            if odd["examples"] else ""))
    unread = c["unreadable"]
    out.append(f"  unreadable   {unread['entries']:,}" + "".join(
        f"; {e['reason']}" for e in unread["examples"][:5]))
    ex = c["excluded"]
    out.append(f"  excluded     {_n(ex['entries'], 'entry', 'entries')} "
               f"({_n(ex['dirs'], 'directory', 'directories')}, not entered)" + "".join(
                   f"; {rule}: {n:,}" for rule, n in ex["by_rule"].items()))
    out.append(f"  batches      {c['batches']:,} wait: `fleetsync run --src {c['src']} "
               f"--dest DEST --ledger {c['ledger']}` copies them without walking SRC again")
    return out

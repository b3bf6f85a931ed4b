"""``/var/hostsfile``: the job's hosts, one line per slot (Shifter's format).

A job's slots on a node are its CPUs there.  Slurm says so in its own compact forms,
which this module reads:

- a node list, ``n[1-3,7],login01`` (``SLURM_JOB_NODELIST``);
- CPUs per node, ``2(x3),1`` (``SLURM_JOB_CPUS_PER_NODE``: a count, repeated ``(xN)``
  times, for the nodes in order).

Shifter's setupRoot takes the same as ``-N "n1/2 n2/2 n3/2"`` (``host/count`` words),
and so does ours.  The file then reads::

    n1
    n1
    n2
    ...

A host name is a DNS label path (letters, digits, ``.``, ``-``, ``_``); anything else is
refused, so the file can hold nothing but host names.
"""

from __future__ import annotations

import re

from shifter.errors import UsageError

PATH = "var/hostsfile"  # in the UDI
MAX_SLOTS = 1 << 20  # a sanity bound: more lines than any machine has CPUs
_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CPUS_RE = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")
_HINT = "e.g. -N 'n1/2 n2/2' (host/slots words, separated by spaces)"


def expand_nodelist(nodelist: str) -> list[str]:
    """``n[1-3,7],a01`` -> ``['n1', 'n2', 'n3', 'n7', 'a01']`` (Slurm's hostlist syntax,
    ranges keep their zero padding; several bracket groups multiply)."""
    out: list[str] = []
    for word in _split_top(nodelist.strip()):
        out.extend(_expand_word(word))
    for host in out:
        if not _HOST_RE.match(host):
            raise UsageError(f"invalid node list {nodelist!r}: {host!r} is not a host name")
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    words, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UsageError(f"invalid node list {text!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            words.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise UsageError(f"invalid node list {text!r}: unbalanced '['")
    words.append(cur)
    if any(not w for w in words):
        raise UsageError(f"invalid node list {text!r}: an empty name")
    return words


def _expand_word(word: str) -> list[str]:
    start = word.find("[")
    if start < 0:
        return [word]
    end = word.index("]", start)
    head, body, tail = word[:start], word[start + 1:end], word[end + 1:]
    values: list[str] = []
    for part in body.split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise UsageError(f"invalid node list range [{body}] in {word!r}")
        if not dash:
            values.append(lo)
            continue
        a, b = int(lo), int(hi)
        if b < a or b - a > MAX_SLOTS:
            raise UsageError(f"invalid node list range [{body}] in {word!r}")
        values.extend(str(n).zfill(len(lo)) for n in range(a, b + 1))
    return [head + v + rest for v in values for rest in _expand_word(tail)]


def expand_cpus(spec: str, nodes: int) -> list[int]:
    """``2(x3),1`` -> ``[2, 2, 2, 1]``; must give exactly ``nodes`` counts."""
    counts: list[int] = []
    for word in spec.strip().split(","):
        m = _CPUS_RE.match(word.strip())
        if not m:
            raise UsageError(f"invalid CPUs per node {spec!r}: {word!r} is not N or N(xM)")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
        if len(counts) > MAX_SLOTS:
            raise UsageError(f"invalid CPUs per node {spec!r}: too many nodes")
    if len(counts) != nodes:
        raise UsageError(f"invalid CPUs per node {spec!r}: {len(counts)} counts for {nodes} nodes")
    return counts


def from_slurm(nodelist: str, cpus_per_node: str) -> list[tuple[str, int]]:
    """The (host, slots) of a job from Slurm's node list and CPUs per node."""
    hosts = expand_nodelist(nodelist)
    return list(zip(hosts, expand_cpus(cpus_per_node, len(hosts))))


def parse_option(text: str) -> list[tuple[str, int]]:
    """setupRoot's ``-N "host/slots host/slots ..."`` (a bare ``host`` is one slot)."""
    out: list[tuple[str, int]] = []
    for word in text.split():
        host, sep, count = word.partition("/")
        if not _HOST_RE.match(host):
            raise UsageError(f"invalid host list entry {word!r}: {host!r} is not a host name", _HINT)
        if sep and not count.isdigit():
            raise UsageError(f"invalid host list entry {word!r}: {count!r} is not a number of slots", _HINT)
        slots = int(count) if sep else 1
        if slots > MAX_SLOTS:
            raise UsageError(f"invalid host list entry {word!r}: too many slots", _HINT)
        out.append((host, slots))
    if not out:
        raise UsageError("invalid host list '': no hosts", _HINT)
    return out


def format_option(hosts: list[tuple[str, int]]) -> str:
    """The ``-N`` form of (host, slots) pairs."""
    return " ".join(f"{h}/{n}" for h, n in hosts)


def render(hosts: list[tuple[str, int]]) -> str:
    """The file: each host once per slot, in order."""
    if sum(n for _, n in hosts) > MAX_SLOTS:
        raise UsageError("the host list has too many slots")
    return "".join(f"{h}\n" * n for h, n in hosts)

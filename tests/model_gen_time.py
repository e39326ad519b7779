"""Random NF models that read the clock (`ctx.now()`), for the timed differential test
(tests/test_differential_time.py); an extension of tests/model_gen.py, whose vocabulary they keep.

On top of model_gen's statements a generated model has a time cell `last` (a Counter of 4, 8 or
32 bits: narrow ones wrap within a short run) and uses the clock the ways DESIGN.md "Time" cares
about: several reads per packet (`ctx.now()` as a local and inline), reads on some paths only,
the clock stored in state (`self.last = ...`, into Maps), timeouts `now - self.last <op> T` at
small T (exactly at the boundary included, every comparison operator), time differences written
into packet fields (`label=now - self.last`) and the raw clock written into a field, masked
differences that wrap at the time width, and choices next to clock reads. Every model reads the
clock on at least one path."""
from __future__ import annotations

from hypothesis import strategies as st

import model_gen
from model_gen import Generated, _Config, _Decl, _Scope, _Writer, compile_model

TIME_WIDTHS = (4, 8, 32)
TIMEOUTS = (0, 1, 2, 3)
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")


class _ClockWriter(_Writer):
    """model_gen's writer with clock statements added to its vocabulary."""

    def declare(self):
        super().declare()
        self.time_width = self.pick(TIME_WIDTHS)
        self.decls.append(_Decl("last", "counter", value=self.time_width))
        if self.chance(3):
            self.decls.append(_Decl("seen", "map", key="flow", value=self.time_width))
        self.constants.update(TIMEOUTS)

    def clock(self, scope: _Scope) -> str:
        """A clock value: a local holding a read, or a fresh read."""
        nows = [v for v in scope.ints if v.startswith("now")]
        return self.pick(nows) if nows and self.chance(5) else "ctx.now()"

    def elapsed(self, scope: _Scope) -> str:
        """Time since the stored one: exact (a Python int, may be negative) or masked at the width."""
        since = self.pick(["self.last"] + ([v for v in scope.ints if v.startswith("age")] or []))
        diff = f"({self.clock(scope)} - {since})"
        return f"({diff} & {(1 << self.time_width) - 1})" if self.chance(2) else diff

    def statement(self, scope: _Scope, depth: int, indent: str) -> list[str]:
        if not self.chance(3):
            return super().statement(scope, depth, indent)
        i = indent
        forms = ["read", "stamp", "stamp", "emit_time", "timeout", "timeout"]
        if any(d.name == "seen" for d in self.decls):
            forms += ["flow_timeout"]
        if depth >= self.cfg.max_depth:
            forms = [f for f in forms if "timeout" not in f]
        form = self.pick(forms)
        if form == "read":
            return self.read(scope, i)
        if form == "stamp":
            return [f"{i}self.last = {self.clock(scope)}"]
        if form == "emit_time":
            value = self.pick([self.clock(scope), self.elapsed(scope), "self.last"])
            return [f"{i}ctx.emit(pkt.rewrite({self.pick(['label', 'length', 'sport'])}={value}), {self.pick(self.gates)!r})"]
        if form == "timeout":
            return self.timeout(scope, depth, i)
        return self.flow_timeout(scope, depth, i)

    def read(self, scope: _Scope, i: str) -> list[str]:
        name = self.fresh("now")
        scope.ints.append(name)
        return [f"{i}{name} = ctx.now()"]

    def timeout(self, scope: _Scope, depth: int, i: str, otherwise: bool = True) -> list[str]:
        cond = f"{self.elapsed(scope)} {self.pick(COMPARISONS)} {self.pick(TIMEOUTS)}"
        lines = [f"{i}if {cond}:"] + self.block(scope.child(), depth + 1, i + "    ", 2)
        if otherwise and self.chance(4):
            lines += [f"{i}else:"] + self.block(scope.child(), depth + 1, i + "    ", 2)
        return lines

    def flow_timeout(self, scope: _Scope, depth: int, i: str, announce: bool = False) -> list[str]:
        """An idle timeout per flow: the firewall of DESIGN.md "Time", with a random comparison
        (announce: a (re)opened flow is announced, so losing the map shows in the outputs)."""
        name = self.fresh("age")
        inner = scope.child()
        inner.ints.append(name)
        now = self.clock(scope)
        lines = [f"{i}{name} = self.seen.get(pkt.flow)",
                 f"{i}if {name} is None or {now} - {name} {self.pick(COMPARISONS)} {self.pick(TIMEOUTS)}:",
                 f"{i}    self.seen[pkt.flow] = {now}"]
        lines += self.block(inner, depth + 1, i + "    ", 1)
        return lines + ([f"{i}    ctx.emit(pkt, {self.pick(self.gates)!r})"] if announce else [])


@st.composite
def clocked_models(draw, max_statements: int = 4, max_depth: int = 1, max_expr_depth: int = 1,
                   max_choices: int = 1, max_pool: int = 2, nondeterministic: bool = False) -> Generated:
    """A model that reads the clock on at least one path and ends with an output of a
    state- or time-dependent value (so failover checks are seldom vacuous)."""
    w = _ClockWriter(draw, _Config(max_statements, max_depth, max_expr_depth, max_choices, max_pool, nondeterministic))
    w.declare()
    scope = _Scope()
    body = []
    if w.chance(5):
        body.append("        now0 = ctx.now()")
        scope.ints.append("now0")
    body += w.block(scope, 0, "        ", max_statements)
    ended = body[-1].lstrip().startswith("return")
    if "ctx.now()" not in "\n".join(body) and not ended:
        body += [f"        if ctx.now() - self.last {w.pick(COMPARISONS)} {w.pick(TIMEOUTS)}:",
             f"            ctx.emit(pkt, {w.pick(w.gates)!r})"]
    if "ctx.now()" not in "\n".join(body):  # ended by a return before any read: read first
        body.insert(0, "        self.last = ctx.now()")
    if not body[-1].lstrip().startswith("return"):
        value = w.pick(["self.last", w.elapsed(scope)] + [f"self.{d.name}" for d in w.of("counter")] + scope.ints)
        body.append(f"        ctx.emit(pkt.rewrite({w.pick(model_gen.INT_FIELDS)}={value}), {w.pick(w.gates)!r})")
    source = (model_gen.HEADER + "class Generated(NF):\n" + "\n".join(w.render_decls()) + "\n\n"
              + "    def handle(self, pkt, ctx):\n" + "\n".join(body) + "\n")
    return Generated(source, compile_model(source), sorted(w.constants), w.nchoices > 0)


class _MapClockWriter(_ClockWriter):
    """Time kept only in a map of clock values (`seen`, value kind `Bits(32, 'Time')`), the shape
    verify/time_shift.py can shift: idle timeouts per flow, expiry times (now + K stored, compared
    with the clock; sometimes now - K stored, which the shift must refuse), differences compared or
    written into fields, and sometimes the raw clock written into a field or compared with a
    constant (which makes the model depend on absolute time, so the proof must not shift it)."""

    def declare(self):
        _Writer.declare(self)
        self.time_width = 32
        self.decls.append(_Decl("seen", "map", key="flow", value=32))
        self.constants.update(TIMEOUTS)

    def render_decls(self) -> list[str]:
        return [line.replace("Bits(32, 'B32')", "Bits(32, 'Time')") if line.startswith("    seen =") else line
                for line in super().render_decls()]

    def elapsed(self, scope: _Scope) -> str:
        ages = [v for v in scope.ints if v.startswith("age")]
        since = self.pick(ages) if ages else self.clock(scope)
        return f"({self.clock(scope)} - {since})"

    def statement(self, scope: _Scope, depth: int, indent: str) -> list[str]:
        if not self.chance(4):
            return _Writer.statement(self, scope, depth, indent)
        i = indent
        forms = ["read", "emit_time", "timeout", "stamp", "absolute"] + ["flow_timeout", "flow_expiry"] * 2
        if depth >= self.cfg.max_depth:
            forms = [f for f in forms if "timeout" not in f and "expiry" not in f and f != "absolute"]
        form = self.pick(forms)
        if form == "stamp":
            return [f"{i}self.seen[pkt.flow] = {self.expiry(scope)}"]
        if form == "flow_expiry":
            return self.flow_expiry(scope, depth, i)
        if form == "absolute":  # a time compared with a constant: not invariant under a shift
            lines = [f"{i}if {self.clock(scope)} {self.pick(COMPARISONS)} {self.pick(TIMEOUTS)}:"]
            return lines + self.block(scope.child(), depth + 1, i + "    ", 1)
        if form == "emit_time":
            value = self.elapsed(scope) if self.chance(6) else self.clock(scope)
            return [f"{i}ctx.emit(pkt.rewrite({self.pick(['label', 'length', 'sport'])}={value}), {self.pick(self.gates)!r})"]
        if form == "read":
            return self.read(scope, i)
        if form == "timeout":
            return self.timeout(scope, depth, i, otherwise=False)
        return self.flow_timeout(scope, depth, i, announce=True)


    def expiry(self, scope: _Scope) -> str:
        """A clock value, or one plus a timeout (an expiry time); now and then minus one."""
        if self.chance(3):
            return self.clock(scope)
        return f"{self.clock(scope)} {'-' if self.chance(2) else '+'} {self.pick(TIMEOUTS)}"

    def flow_expiry(self, scope: _Scope, depth: int, i: str) -> list[str]:
        """A flow's entry expires at the time stored with it (compared with the clock, either side
        sometimes shifted by a constant); a (re)opened flow is announced."""
        name = self.fresh("age")
        inner = scope.child()
        inner.ints.append(name)
        now = self.clock(scope)
        side = f"{name} + {self.pick(TIMEOUTS)}" if self.chance(3) else name
        lines = [f"{i}{name} = self.seen.get(pkt.flow)",
                 f"{i}if {name} is None or {now} {self.pick(COMPARISONS)} {side}:",
                 f"{i}    self.seen[pkt.flow] = {self.expiry(scope)}"]
        lines += self.block(inner, depth + 1, i + "    ", 1)
        return lines + [f"{i}    ctx.emit(pkt, {self.pick(self.gates)!r})"]


@st.composite
def map_clocked_models(draw, max_statements: int = 4, max_depth: int = 1, max_expr_depth: int = 1,
                       max_choices: int = 1, max_pool: int = 2, nondeterministic: bool = False) -> Generated:
    """A model that keeps its times in a map of clock values (`_MapClockWriter`), reads the clock
    at least once and ends with an output."""
    w = _MapClockWriter(draw, _Config(max_statements, max_depth, max_expr_depth, max_choices, max_pool, nondeterministic))
    w.declare()
    scope = _Scope()
    first = w.flow_expiry(scope, 0, "        ") if w.chance(4) else w.flow_timeout(scope, 0, "        ", announce=True)
    body = first + w.block(scope, 0, "        ", max_statements)
    if not body[-1].lstrip().startswith("return"):
        body.append(f"        ctx.emit(pkt, {w.pick(w.gates)!r})")
    source = (model_gen.HEADER + "class Generated(NF):\n" + "\n".join(w.render_decls()) + "\n\n"
              + "    def handle(self, pkt, ctx):\n" + "\n".join(body) + "\n")
    return Generated(source, compile_model(source), sorted(w.constants), w.nchoices > 0)

"""The safe unary methods of a forked gRPC service, probed on every side and compared like JSON answers.

Each probe is one request to one method (`schema.Method`), sent to the primary control, the secondary
control and the candidate (or, without controls, to the baseline and the sandbox). The gRPC statuses are
compared by name first: where the controls disagree the answer is noise, and a status the candidate
answers that its controls did not is a `status_changed` finding (breaking unless the candidate now
answers OK). Answers of one status, OK, are decoded with the base descriptors (`schema`) into JSON and
handed to the response diff's own comparison and learned noise (`diff.control_findings`; without
controls, the baseline against the sandbox, by shape only, as the baseline diff compares), so a finding
carries its kind, its field path as a pointer (`/amount/cents`), the control's value and the
candidate's. A field the base descriptors do not know (`/#3`, a renumbered or new field) is an
`unknown_field` finding, not breaking on its own: a new optional field is one too, and a renumbered
field is also missing, or zero, at its old place, which is.

Requests, bounded and built from the descriptors alone (no server reflection, no recorded bodies, which
the data plane does not keep): first the empty message for every method; then, from the values the
primary control's answers held, up to MAX_VALUES_PER_FIELD requests per method that set each top-level
scalar field of the request to a value of a field with the same name and type seen in an answer (`sku`
of a listed item into `GetQuote{sku}`), at most MAX_PROBES_PER_METHOD per method and `budget` in all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from bot.evidence import DiffResult, Finding
from bot.verify.compare import ComparePolicy, Response, _parse_pointer, compare
from bot.verify.diff import PARALLEL_PROBES, NotSent, control_findings
from bot.verify.grpc import status
from bot.verify.grpc.schema import UNKNOWN_PREFIX, Method, Schema, Undecodable
from bot.verify.noise import generalise, noise_pointers

__all__ = [
    "MAX_PROBES_PER_METHOD",
    "MAX_VALUES_PER_FIELD",
    "PROBE_SUFFIX",
    "Answer",
    "Call",
    "GrpcCheck",
    "SendCall",
    "probe_service",
]

MAX_VALUES_PER_FIELD: Final = 3
MAX_PROBES_PER_METHOD: Final = 1 + MAX_VALUES_PER_FIELD
MAX_MESSAGE_CHARS: Final = 120
"""Characters of a service's own `grpc-message` kept in a finding: it is free text, often huge."""
PROBE_SUFFIX: Final = "(probed from descriptors)"
_LABEL_CHARS: Final = 120
_JSON: Final = {"content-type": "application/json"}


@dataclass(frozen=True)
class Call:
    """One request to one method of one service: the message's bytes and the values it was built from."""

    service: str
    method: Method
    body: bytes
    values: Mapping[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        shown = json.dumps(dict(self.values), ensure_ascii=False, default=str)
        if len(shown) > _LABEL_CHARS:
            shown = shown[: _LABEL_CHARS - 1] + "…"
        return f"gRPC {self.method.path} {shown} {PROBE_SUFFIX}"


@dataclass(frozen=True)
class Answer:
    """What one side answered: the gRPC status code, its message, and the answer message's bytes."""

    code: int
    message: str = ""
    body: bytes = b""


SendCall = Callable[[Call, str], Answer]
"""Send a call to one side (`primary`, `secondary`, `candidate`; or `baseline`, `sandbox`); raises
NotSent when it gets no answer at all."""


@dataclass
class GrpcCheck:
    diff: list[DiffResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def probe_service(
    schema: Schema,
    service: str,
    send: SendCall,
    *,
    controls: bool,
    budget: int,
    policy: ComparePolicy | None = None,
) -> GrpcCheck:
    """Every safe unary method of `service`, probed and compared; at most `budget` calls per side."""
    check = GrpcCheck()
    if not schema.methods:
        check.notes.append(
            f"{service}: no unary method is marked `option idempotency_level = NO_SIDE_EFFECTS;`:"
            " nothing probed from its descriptors"
        )
        return check
    sides = ("primary", "secondary", "candidate") if controls else ("baseline", "sandbox")
    against = "control" if controls else "baseline"
    rules = policy or ComparePolicy()
    first = [Call(service, m, schema.encode(m, {})) for m in schema.methods][:budget]
    answered = _send_all(first, send, sides)
    more = _from_answers(schema, service, answered, budget - len(first))
    answered += _send_all(more, send, sides)
    undecodable: set[str] = set()
    for call, answers in answered:
        if isinstance(answers, str):
            check.diff.append(
                DiffResult(request=f"{call.label} (not sent: {answers})", service=service, against=against)
            )
            continue
        if controls:
            findings, noise = _judge(schema, call.method, answers, rules)
        else:
            findings, noise = _judge(schema, call.method, [answers[0], *answers], rules, values=False)
        if noise == ["base"]:
            undecodable.add(call.method.path)
            noise = [""]
        check.diff.append(
            DiffResult(
                request=call.label,
                service=service,
                findings=findings,
                against=against,
                noise=generalise(noise),
            )
        )
    check.notes += [
        f"{service}: the base code's answers to {path} do not decode with the base protos: not compared"
        for path in sorted(undecodable)
    ]
    if len(schema.methods) > budget:
        check.notes.append(
            f"{service}: {len(schema.methods) - budget} safe methods not probed (max_requests)"
        )
    return check


def _send_all(
    calls: Sequence[Call], send: SendCall, sides: Sequence[str]
) -> list[tuple[Call, list[Answer] | str]]:
    """Each call to every side in turn; the calls side by side (they are reads)."""

    def one(call: Call) -> tuple[Call, list[Answer] | str]:
        try:
            return call, [send(call, side) for side in sides]
        except NotSent as exc:
            return call, str(exc).split(":", 1)[0]

    if len(calls) <= 1:
        return [one(call) for call in calls]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_PROBES, len(calls))) as pool:
        return list(pool.map(one, calls))


def _from_answers(
    schema: Schema, service: str, answered: Iterable[tuple[Call, list[Answer] | str]], budget: int
) -> list[Call]:
    """Requests whose top-level scalar fields take values the first side's OK answers held for a field
    of the same name and type: the ids and keys the service itself hands out."""
    seen: dict[tuple[str, str], list[object]] = {}
    for call, answers in answered:
        if isinstance(answers, str) or answers[0].code != status.OK:
            continue
        for name, kind, value in schema.scalars(call.method, answers[0].body):
            values = seen.setdefault((name, kind), [])
            if value not in values and len(values) < MAX_VALUES_PER_FIELD and value not in ("", 0, False):
                values.append(value)
    calls: list[Call] = []
    for method in schema.methods:
        fillable = [
            (name, seen[(name, kind)]) for name, kind in schema.inputs(method) if (name, kind) in seen
        ]
        for index in range(MAX_VALUES_PER_FIELD):
            chosen = {name: found[index] for name, found in fillable if index < len(found)}
            if not chosen or len(calls) >= budget:
                break
            calls.append(Call(service, method, schema.encode(method, chosen), chosen))
    return calls


def _judge(
    schema: Schema, method: Method, answers: Sequence[Answer], policy: ComparePolicy, *, values: bool = True
) -> tuple[list[Finding], list[str]]:
    """(findings, noise pointers) for one call's answers: primary, secondary, candidate. Noise `["base"]`
    marks controls whose own answers do not decode. Without `values` (no controls: the baseline twice,
    so no noise can be learned) the answers are compared by shape only, as the baseline diff does."""
    primary, secondary, candidate = answers
    if primary.code != secondary.code:
        return [], [""]
    if candidate.code != primary.code:
        finding = Finding(
            kind="status_changed",
            pointer="",
            baseline=status.name(primary.code),
            sandbox=_status_text(candidate),
            breaking=candidate.code != status.OK,
        )
        return [finding], []
    if primary.code != status.OK:
        return [], []
    try:
        decoded = [schema.decode(method, primary.body), schema.decode(method, secondary.body)]
    except Undecodable:
        return [], ["base"]
    try:
        decoded.append(schema.decode(method, candidate.body))
    except Undecodable as exc:
        expected = f"a {method.output.full_name}"
        return [
            Finding(kind="undecodable", pointer="", baseline=expected, sandbox=str(exc), breaking=True)
        ], []
    p, s, c = (Response(200, _JSON, json.dumps(d).encode()) for d in decoded)
    noise = noise_pointers(p, s)
    findings = control_findings(p, s, c, noise, policy) if values else compare(p, c, policy)
    return [_unknown(f, decoded[2]) for f in findings], noise


def _unknown(finding: Finding, candidate: dict[str, Any]) -> Finding:
    """A member only the candidate has that the base descriptors do not know: `unknown_field`, with
    the value its wire bytes hold."""
    path = _parse_pointer(finding.pointer)
    if finding.kind != "field_added" or not path or not path[-1].startswith(UNKNOWN_PREFIX):
        return finding
    value: Any = candidate
    for segment in path:
        value = value.get(segment) if isinstance(value, dict) else None
    number = path[-1][len(UNKNOWN_PREFIX) :]
    shown = value if isinstance(value, str) else json.dumps(value)
    return Finding(
        kind="unknown_field",
        pointer=finding.pointer,
        baseline=None,
        sandbox=f"field {number} ({shown}), not in the base protos: renumbered, or new",
        breaking=False,
    )


def _status_text(answer: Answer) -> str:
    """`NOT_FOUND: no sku mug`, the service's message clipped to one short line."""
    text = " ".join(answer.message.split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return f"{status.name(answer.code)}: {text}" if text else status.name(answer.code)

"""Where a request runs, and why: the ordered rules. The first rule that decides wins and is
named in the record, with a sentence a person can read.

1. Hard rules
   - a local-only conversation (`ChatRequest.local_only`) → device, whatever else is asked
   - mode `local-only` → device
   - a per-message override (`/local`) or the conversation's pin to the device → device
   - privacy: anything the scanner flags (or a scanner failure) → device; with
     privacy_action "redact" the rules below decide, and the cloud gets placeholders instead
     of the findings (router.redaction)
   - no cloud configured / no key, the cloud's circuit open, the cloud busy after a 429 → device
   - the device's circuit open → cloud
   - a per-message `/cloud`, a pin to the cloud, mode `cloud-preferred` → cloud
2. Capacity: prompt + requested tokens above the device's context window → cloud; the device
   loaded past its limits (answers in progress, queue depth, estimated wait) → cloud (overflow),
   unless the cloud would likely start answering later than the busy device (router.latency:
   recent first-token times per answer in progress, times each side's answers in progress
   now): then the overflow is declined, and the complexity rule decides
3. Complexity: the scorer's value above the threshold → cloud, otherwise → device

A `/cloud` override or a pin is a wish, not a hard rule: privacy and availability come first.
The per-message override beats the request's pin (it is the more specific request); nothing
beats a local-only conversation. Rules are chosen from typed inputs (e.g. `cloud_busy`), never
by reading the sentences that explain them.

Pure and fast: no I/O; the hybrid backend gathers the inputs (`RoutingInput`) and acts on the
`Decision`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from router.complexity import ComplexityScorer, FeatureScorer
from router.health import BreakerSettings
from router.privacy import Finding, PrivacyScanner
from router.protocol import Capabilities, Message, Pin, Route

__all__ = [
    "MODES",
    "PRIVACY_ACTIONS",
    "Decision",
    "RouterSettings",
    "RoutingInput",
    "RoutingPolicy",
    "Side",
    "estimate_tokens",
    "parse_override",
]

Side = Pin
MODES = ("auto", "local-only", "cloud-preferred")
PRIVACY_ACTIONS = ("keep-local", "redact")
DEVICE = "on this device"
CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """Everything the router needs to decide (from the user's config, plus internal limits)."""

    mode: str = "auto"
    """auto, local-only (nothing ever leaves the device) or cloud-preferred."""
    complexity_threshold: float = 0.6
    """Requests scoring above this go to the cloud."""
    privacy_terms: tuple[str, ...] = ()
    """Words or names that must never leave the device (case-insensitive, whole words)."""
    privacy_patterns: tuple[str, ...] = ()
    """Regular expressions that must never leave the device."""
    privacy_action: str = "keep-local"
    """What a request with private data does when another rule would send it to the cloud:
    keep-local (answer on the device) or redact (send it with placeholders, router.redaction)."""
    privacy_regions: tuple[str, ...] = ()
    """Regions whose national phone formats the scanner reads; empty: the locale's."""
    max_local_inflight: int = 4
    """Answers in progress on the device at which new requests overflow to the cloud."""
    max_local_queue: int = 1
    """Requests waiting in the device engine's queue at which new ones overflow."""
    max_local_wait_s: float = 10.0
    """Estimated wait for the device (queue × tokens ÷ recent speed) above which → cloud."""
    chars_per_token: float = 3.0
    """For the context-length estimate without a tokenizer (kept low: over-estimating only
    sends a borderline request to the cloud, under-estimating makes it fail on the device)."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 0.0 <= self.complexity_threshold <= 1.0:
            raise ValueError("complexity_threshold must be between 0 and 1")
        if self.max_local_inflight < 1 or self.max_local_queue < 0:
            raise ValueError("max_local_inflight must be at least 1, max_local_queue at least 0")
        if self.chars_per_token <= 0:
            raise ValueError("chars_per_token must be positive")
        if self.privacy_action not in PRIVACY_ACTIONS:
            raise ValueError(
                f"privacy_action must be one of {', '.join(PRIVACY_ACTIONS)}, "
                f"not {self.privacy_action!r}"
            )


@dataclass(frozen=True, slots=True)
class RoutingInput:
    """What the policy looks at for one request."""

    messages: Sequence[Message]
    """The conversation as it would be sent (override prefix already stripped)."""
    max_tokens: int
    continue_from: str = ""
    override: Side | None = None
    """From a `/local` or `/cloud` prefix on the last user message."""
    pin: Side | None = None
    """The request's pin (router.protocol.ChatRequest.pin): a wish."""
    local_only: bool = False
    """The conversation must stay on this device (ChatRequest.local_only): a hard rule."""
    cloud_missing: str | None = None
    """Why there is no usable cloud at all ("no cloud configured"), or None."""
    cloud_blocked: str = ""
    """Why the cloud may not be used now (its breaker's reason), or ""."""
    cloud_busy: bool = False
    """The cloud is blocked because it answered busy (429) and its Retry-After has not passed,
    rather than because it is failing: decides the rule's name ("cloud-busy" vs "health")."""
    local_blocked: str = ""
    """Why the device may not be used now, or ""."""
    local: Capabilities | None = None
    """The device engine's capabilities and load."""
    local_inflight: int = 0
    """Answers the router itself has running on the device now."""
    cloud_inflight: int = 0
    """Answers the router itself has running on the cloud now."""
    local_ttft_s: float | None = None
    """The device's recent time to first token per answer in progress (router.latency)."""
    cloud_ttft_s: float | None = None
    """The cloud's recent time to first token per answer in progress, if known."""
    other_texts: tuple[tuple[str, str], ...] = ()
    """The request's other fields that go over the wire, as (part, text): ("stop strings",
    ...), ("adapter name", ...). Scanned like the messages."""


@dataclass(frozen=True, slots=True)
class Decision:
    side: Side
    rule: str
    reason: str
    scores: Mapping[str, float] = field(default_factory=dict)
    cloud_allowed: bool = True
    """Whether the answer may move to the cloud if the device fails (False when privacy,
    the mode, a pin or an override keeps it on the device)."""
    findings: tuple[Finding, ...] = ()
    redact: bool = False
    """Send to the cloud only with the findings replaced by placeholders (privacy_action
    "redact"); a device answer that fails over is redacted too."""

    def route(self, backend: str, failover: str | None = None) -> Route:
        return Route(backend, self.rule, self.reason, dict(self.scores), failover)


def parse_override(text: str) -> tuple[Side | None, str]:
    """A leading `/local` or `/cloud` (then a space, a newline or the end) and the text
    without it."""
    stripped = text.lstrip()
    for side in ("local", "cloud"):
        prefix = "/" + side
        if stripped.startswith(prefix):
            rest = stripped[len(prefix) :]
            if not rest or rest[0].isspace():
                return side, rest.lstrip()
    return None, text


def estimate_tokens(messages: Sequence[Message], extra: str, chars_per_token: float) -> int:
    """Prompt tokens without a tokenizer: characters ÷ chars_per_token, plus the chat
    template's few tokens per message."""
    chars = sum(len(m.content) for m in messages) + len(extra)
    return math.ceil(chars / chars_per_token) + 4 * len(messages) + 2


def _slower_cloud(inp: RoutingInput, local_inflight: int, scores: dict[str, float]) -> str:
    """Why overflowing would not answer sooner ("" when it would, or when nobody knows): each
    side's expected wait is its recent first-token time per answer in progress × (1 + the
    answers in progress there now)."""
    if inp.cloud_ttft_s is None or inp.local_ttft_s is None:
        return ""
    local_wait = inp.local_ttft_s * (1 + local_inflight)
    cloud_wait = inp.cloud_ttft_s * (1 + inp.cloud_inflight)
    scores["local_wait_ttft_s"] = round(local_wait, 3)
    scores["cloud_wait_ttft_s"] = round(cloud_wait, 3)
    scores["cloud_inflight"] = float(inp.cloud_inflight)
    if cloud_wait <= local_wait:
        return ""
    return (
        f"the cloud would likely start answering later ({cloud_wait:.2f} s against "
        f"{local_wait:.2f} s here, from recent first tokens and the answers in progress)"
    )


def _privacy_reason(findings: Sequence[Finding]) -> str:
    shown = [f.describe() for f in findings[:2]]
    more = len(findings) - len(shown)
    text = ", ".join(shown) + (f" and {more} more" if more else "")
    return f"{text} → kept on this device"


class RoutingPolicy:
    """The rules, with the user's privacy scanner and complexity scorer built once."""

    def __init__(
        self, settings: RouterSettings | None = None, scorer: ComplexityScorer | None = None
    ) -> None:
        self.settings = settings or RouterSettings()
        self.scorer: ComplexityScorer = scorer or FeatureScorer()
        # Raises PrivacyConfigError for a bad user pattern: better at start-up than per request.
        self.scanner = PrivacyScanner(
            self.settings.privacy_terms,
            self.settings.privacy_patterns,
            self.settings.privacy_regions or None,
        )

    def decide(self, inp: RoutingInput) -> Decision:
        """The first rule that decides, with its reason and the scores it looked at."""
        s = self.settings
        scores: dict[str, float] = {}
        redacting: tuple[Finding, ...] = ()  # findings that go out as placeholders

        def local(
            rule: str,
            reason: str,
            *,
            cloud_allowed: bool = True,
            findings: tuple[Finding, ...] = (),
        ) -> Decision:
            if redacting and cloud_allowed:
                return Decision("local", rule, reason, scores, True, redacting, redact=True)
            return Decision("local", rule, reason, scores, cloud_allowed, findings)

        def cloud(rule: str, reason: str) -> Decision:
            return Decision("cloud", rule, reason, scores, True, redacting, redact=bool(redacting))

        # 1. hard rules that keep the request on the device
        if inp.local_only:
            return local(
                "pin", f"conversation pinned to this device → {DEVICE}", cloud_allowed=False
            )
        if s.mode == "local-only":
            return local("mode", f"local-only mode → {DEVICE}", cloud_allowed=False)
        wish = inp.override or inp.pin
        if wish == "local":
            what = "/local in the message" if inp.override else "conversation pinned to this device"
            return local(
                "override" if inp.override else "pin", f"{what} → {DEVICE}", cloud_allowed=False
            )
        try:
            findings = tuple(self.scanner.scan(inp.messages, inp.continue_from))
            n = len(inp.messages) + (1 if inp.continue_from else 0)
            findings += tuple(
                Finding(f.kind, n + 1, part)
                for part, text in inp.other_texts
                for f in self.scanner.scan_texts([text])
            )
        except Exception:  # a scanner that fails must fail safe: nothing leaves the device
            return local(
                "privacy", "privacy check failed → kept on this device", cloud_allowed=False
            )
        # An adapter's name cannot be swapped for a placeholder: it stays, whatever the action.
        unredactable = any(f.part == "adapter name" for f in findings)
        if findings and (s.privacy_action != "redact" or unredactable):
            return local(
                "privacy", _privacy_reason(findings), cloud_allowed=False, findings=findings
            )
        redacting = findings  # redact: the other rules decide, the cloud gets placeholders
        if inp.cloud_missing:
            return local("cloud-unavailable", f"{inp.cloud_missing} → {DEVICE}")
        if inp.cloud_blocked:
            rule = "cloud-busy" if inp.cloud_busy else "health"
            return local(rule, f"{inp.cloud_blocked} → {DEVICE}")
        if inp.local_blocked:
            return cloud("health", f"{inp.local_blocked} → {CLOUD}")
        # 2. wishes for the cloud
        if inp.override == "cloud":
            return cloud("override", f"/cloud in the message → {CLOUD}")
        if inp.pin == "cloud":
            return cloud("pin", f"conversation pinned to the cloud → {CLOUD}")
        if s.mode == "cloud-preferred":
            return cloud("mode", f"cloud-preferred mode → {CLOUD}")
        # 3. capacity
        caps = inp.local
        if caps is not None:
            prompt = estimate_tokens(inp.messages, inp.continue_from, s.chars_per_token)
            scores["prompt_tokens"] = float(prompt)
            if prompt + inp.max_tokens > caps.context_window:
                return cloud(
                    "context",
                    f"~{prompt:,} prompt tokens + {inp.max_tokens:,} to answer exceed this "
                    f"device's {caps.context_window:,} → {CLOUD}",
                )
        overflow = self._overflow(inp, scores)
        local_inflight = int(scores.get("local_inflight", 0))
        declined = _slower_cloud(inp, local_inflight, scores) if overflow else ""
        if overflow and not declined:
            return cloud("overflow", f"{overflow} → {CLOUD}")
        # 4. complexity
        score = self.scorer.score(inp.messages)
        scores["complexity"] = round(score, 4)
        scores["threshold"] = s.complexity_threshold
        if score > s.complexity_threshold:
            return cloud(
                "complexity",
                f"complexity {score:.2f} above threshold {s.complexity_threshold:.2f} → {CLOUD}",
            )
        if declined:
            return local("overflow", f"{overflow}, but {declined} → {DEVICE}")
        return local(
            "complexity",
            f"complexity {score:.2f} within threshold {s.complexity_threshold:.2f} → {DEVICE}",
        )

    def _overflow(self, inp: RoutingInput, scores: dict[str, float]) -> str:
        s = self.settings
        load = inp.local.load if inp.local is not None else None
        inflight = max(
            inp.local_inflight, (load.active_sequences + load.queue_depth) if load else 0
        )
        scores["local_inflight"] = float(inflight)
        if inflight >= s.max_local_inflight:
            return f"this device is busy ({inflight} answers in progress)"
        if load is None:
            return ""
        if s.max_local_queue and load.queue_depth >= s.max_local_queue:
            return f"this device is busy ({load.queue_depth} requests waiting)"
        if load.queue_depth and load.recent_tokens_per_s:
            wait = load.queue_depth * inp.max_tokens / load.recent_tokens_per_s
            scores["local_wait_s"] = round(wait, 3)
            if wait > s.max_local_wait_s:
                return f"this device is busy (about {wait:.0f} s to wait)"
        return ""

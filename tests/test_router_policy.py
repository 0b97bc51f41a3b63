"""The routing rules, in order: each decides as specified and says why in a sentence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from router.complexity import FeatureScorer
from router.policy import RouterSettings, RoutingInput, RoutingPolicy, parse_override
from router.privacy import Finding
from router.protocol import Capabilities, Load, Message

EASY = (Message("user", "What is the capital of France?"),)
HARD = (
    Message(
        "user",
        "Think carefully, step by step: prove that the integral of x^2 from 0 to 1 equals 1/3, "
        "then write a Python function that computes it numerically and compare the two.\n"
        "1. state the theorem\n2. solve the equation\n3. analyze the error",
    ),
)
CAPS = Capabilities(model="m", context_window=4096)


def _input(messages: Sequence[Message] = EASY, **kw: object) -> RoutingInput:
    base = RoutingInput(messages=messages, max_tokens=64, local=CAPS)
    return replace(base, **kw)  # type: ignore[arg-type]


def _decide(inp: RoutingInput, **settings: object) -> tuple[str, str, str]:
    d = RoutingPolicy(RouterSettings(**settings)).decide(inp)  # type: ignore[arg-type]
    return d.side, d.rule, d.reason


def test_local_only_mode_wins_over_everything() -> None:
    inp = _input(HARD, override="cloud", pin="cloud")
    assert _decide(inp, mode="local-only") == ("local", "mode", "local-only mode → on this device")


def test_per_message_override_beats_the_pin() -> None:
    assert _decide(_input(override="local", pin="cloud")) == (
        "local",
        "override",
        "/local in the message → on this device",
    )
    assert _decide(_input(override="cloud", pin="local")) == (
        "cloud",
        "override",
        "/cloud in the message → cloud",
    )


def test_pin() -> None:
    assert _decide(_input(HARD, pin="local"))[:2] == ("local", "pin")
    assert _decide(_input(pin="cloud")) == (
        "cloud",
        "pin",
        "conversation pinned to the cloud → cloud",
    )


def test_privacy_beats_a_cloud_override_pin_and_mode() -> None:
    messages = (
        Message("system", "be brief"),
        Message("user", "hello"),
        Message("user", "my card is 4111 1111 1111 1111"),
    )
    inp = _input(messages, override="cloud", pin="cloud")
    side, rule, reason = _decide(inp, mode="cloud-preferred")
    assert (side, rule) == ("local", "privacy")
    assert reason == "payment card number in message 3 → kept on this device"
    decision = RoutingPolicy().decide(inp)
    assert decision.findings == (Finding("card", 3),) and not decision.cloud_allowed


def test_privacy_reason_lists_several_findings() -> None:
    messages = (Message("user", "a@b.com 555-123-4567 536-22-8726"),)
    assert _decide(_input(messages))[2] == (
        "email address in message 1, phone number in message 1 and 1 more → kept on this device"
    )


def test_a_failing_scanner_keeps_the_request_on_the_device() -> None:
    policy = RoutingPolicy(RouterSettings(mode="cloud-preferred"))

    class Broken:
        """Injects a scanner fault: the real scanner does not fail on any text we know."""

        def scan(self, *_: object) -> list[Finding]:
            raise RuntimeError("boom")

    policy.scanner = Broken()  # type: ignore[assignment]
    d = policy.decide(_input(HARD))
    assert (d.side, d.rule, d.reason) == (
        "local",
        "privacy",
        "privacy check failed → kept on this device",
    )
    assert not d.cloud_allowed


def test_no_cloud_configured() -> None:
    inp = _input(HARD, pin="cloud", cloud_missing="no cloud API key")
    assert _decide(inp) == ("local", "cloud-unavailable", "no cloud API key → on this device")


def test_an_open_cloud_circuit_or_a_busy_cloud_keeps_requests_on_the_device() -> None:
    inp = _input(HARD, cloud_blocked="the cloud is failing (connection lost)")
    assert _decide(inp, mode="cloud-preferred") == (
        "local",
        "health",
        "the cloud is failing (connection lost) → on this device",
    )
    inp = _input(HARD, cloud_blocked="the cloud is busy (try again in 12 s)", cloud_busy=True)
    assert _decide(inp)[:2] == ("local", "cloud-busy")


def test_the_rule_comes_from_typed_inputs_not_from_the_words_of_the_reason() -> None:
    # A failing cloud whose error sentence happens to say "busy" is still a health matter.
    inp = _input(HARD, cloud_blocked="the cloud is failing (the line is busy)")
    assert _decide(inp)[:2] == ("local", "health")
    inp = _input(HARD, cloud_blocked="the cloud is resting", cloud_busy=True)
    assert _decide(inp)[:2] == ("local", "cloud-busy")


def test_a_local_only_conversation_is_a_hard_rule_above_every_wish() -> None:
    for kw in ({"override": "cloud"}, {"pin": "cloud"}, {"override": "cloud", "pin": "cloud"}):
        d = RoutingPolicy(RouterSettings(mode="cloud-preferred")).decide(
            _input(HARD, local_only=True, **kw)
        )
        assert (d.side, d.rule) == ("local", "pin"), kw
        assert d.reason == "conversation pinned to this device → on this device"
        assert not d.cloud_allowed  # no failover to the cloud either


def test_an_open_device_circuit_sends_to_the_cloud() -> None:
    inp = _input(local_blocked="this device's engine is failing (out of memory)")
    assert _decide(inp) == (
        "cloud",
        "health",
        "this device's engine is failing (out of memory) → cloud",
    )


def test_cloud_preferred_mode() -> None:
    assert _decide(_input(), mode="cloud-preferred") == (
        "cloud",
        "mode",
        "cloud-preferred mode → cloud",
    )


def test_a_prompt_too_long_for_the_device_goes_to_the_cloud() -> None:
    long = (Message("user", "word " * 3000),)
    side, rule, reason = _decide(_input(long))
    assert (side, rule) == ("cloud", "context")
    assert reason.endswith("exceed this device's 4,096 → cloud")


def test_overflow_on_answers_in_progress_queue_depth_or_wait() -> None:
    assert _decide(_input(local_inflight=4), max_local_inflight=4) == (
        "cloud",
        "overflow",
        "this device is busy (4 answers in progress) → cloud",
    )
    queued = replace(CAPS, load=Load(queue_depth=2, active_sequences=1))
    assert _decide(_input(local=queued), max_local_inflight=8, max_local_queue=2) == (
        "cloud",
        "overflow",
        "this device is busy (2 requests waiting) → cloud",
    )
    slow = replace(CAPS, load=Load(queue_depth=1, active_sequences=1, recent_tokens_per_s=4.0))
    side, rule, reason = _decide(_input(local=slow), max_local_queue=0, max_local_wait_s=5)
    assert (side, rule, reason) == (
        "cloud",
        "overflow",
        "this device is busy (about 16 s to wait) → cloud",
    )


def test_overflow_is_declined_while_the_cloud_would_start_answering_later() -> None:
    busy = {"local_inflight": 4}
    # Each side's wait: its first-token time per answer in progress × (1 + answers there now).
    slower = _input(**busy, cloud_ttft_s=0.8, local_ttft_s=0.1)  # 0.8 × 1 against 0.1 × 5
    assert _decide(slower) == (
        "local",
        "overflow",
        "this device is busy (4 answers in progress), but the cloud would likely start "
        "answering later (0.80 s against 0.50 s here, from recent first tokens and the answers "
        "in progress) → on this device",
    )
    # A complex request still goes to the cloud: that rule is about the answer, not the wait.
    assert _decide(replace(slower, messages=HARD), complexity_threshold=0.5)[:2] == (
        "cloud",
        "complexity",
    )
    # The busier the device, the longer its wait: the same figures overflow at 9 in progress.
    assert _decide(_input(local_inflight=9, cloud_ttft_s=0.8, local_ttft_s=0.1))[:2] == (
        "cloud", "overflow",
    )
    # ... and the busier the cloud, the longer its own.
    assert _decide(_input(local_inflight=9, cloud_inflight=1, cloud_ttft_s=0.8,
                          local_ttft_s=0.1))[:2] == ("local", "overflow")
    faster = _input(**busy, cloud_ttft_s=0.2, local_ttft_s=1.5)
    assert _decide(faster)[:2] == ("cloud", "overflow")
    for unknown in ({"cloud_ttft_s": 0.8}, {"local_ttft_s": 0.1}, {}):
        assert _decide(_input(**busy, **unknown))[:2] == ("cloud", "overflow")
    # Not busy: the figures do not matter.
    assert _decide(_input(cloud_ttft_s=0.01, local_ttft_s=5.0))[:2] == ("local", "complexity")


def test_first_token_times_average_and_are_forgotten() -> None:
    from router.latency import FirstTokenTimes

    now = [0.0]
    times = FirstTokenTimes(memory_s=60, weight=0.5, clock=lambda: now[0])
    assert times.recent("cloud") is None
    times.record("cloud", 1.0)
    times.record("cloud", 0.2)
    assert times.recent("cloud") == pytest.approx(0.6)
    assert times.recent("local") is None
    now[0] = 61.0
    assert times.recent("cloud") is None  # a slow cloud gets tried again
    times.record("cloud", 0.3)
    assert times.recent("cloud") == pytest.approx(0.3)  # a fresh start, not averaged with 0.6
    times.record("local", 0.4, ahead=3)  # per answer in progress: 3 were ahead of this one
    assert times.recent("local") == pytest.approx(0.1)


def test_complexity_against_the_threshold() -> None:
    side, rule, reason = _decide(_input(HARD), complexity_threshold=0.5)
    assert (side, rule) == ("cloud", "complexity")
    assert reason.startswith("complexity ") and "above threshold 0.50 → cloud" in reason
    side, rule, reason = _decide(_input(EASY), complexity_threshold=0.5)
    assert (side, rule) == ("local", "complexity")
    assert "within threshold 0.50 → on this device" in reason


def test_the_record_carries_the_scores() -> None:
    d = RoutingPolicy(RouterSettings(complexity_threshold=0.4)).decide(_input(EASY))
    assert set(d.scores) >= {"complexity", "threshold", "prompt_tokens"}
    route = d.route("local")
    assert (route.backend, route.rule, route.scores["threshold"]) == ("local", "complexity", 0.4)


def test_the_scorer_is_pluggable() -> None:
    class Always:
        name = "always"

        def score(self, messages: Sequence[Message]) -> float:
            return 0.9

    d = RoutingPolicy(RouterSettings(complexity_threshold=0.5), Always()).decide(_input(EASY))
    assert (d.side, d.rule) == ("cloud", "complexity")


def test_hard_prompts_score_higher_than_easy_ones() -> None:
    scorer = FeatureScorer()
    easy, hard = scorer.score(EASY), scorer.score(HARD)
    assert 0.0 <= easy < 0.3 < 0.6 < hard <= 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/local what is my plan", ("local", "what is my plan")),
        ("  /cloud\nprove it", ("cloud", "prove it")),
        ("/cloud", ("cloud", "")),
        ("/localhost is down", (None, "/localhost is down")),
        ("use /cloud here", (None, "use /cloud here")),
    ],
)
def test_parse_override(text: str, expected: tuple[str | None, str]) -> None:
    assert parse_override(text) == expected

"""The promotion gate: each budget can fail a candidate on its own, with a reason an operator can read."""

from __future__ import annotations

import pytest

from tuning.gate import GateBudgets, decide

BUDGETS = GateBudgets()


def good_candidate() -> dict:
    return {
        "domain_nll": 1.00,
        "domain_nll_base": 1.30,
        "general_nll_delta_pct": 0.2,
        "chat_kl": 0.01,
        "mc_retained": 1.0,
        "refusal": 0.80,
        "refusal_base": 0.80,
        "over_refusal": 0.06,
        "over_refusal_base": 0.06,
        "policy_passed": 1.0,
        "policy_passed_base": 1.0,
        "understanding": 0.90,
        "understanding_base": 0.88,
    }


def test_a_candidate_inside_every_budget_is_promoted():
    decision = decide(good_candidate(), serving_domain_nll=1.2, canary_hits=[], budgets=BUDGETS)
    assert decision.promote and decision.reasons == []
    assert all(check["passed"] for check in decision.checks.values())
    assert decision.as_dict()["decision"] == "promote"


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"domain_nll": 1.19}, "domain_nll"),  # better than serving 1.2, but by less than 2%
        ({"general_nll_delta_pct": 1.5}, "general_nll_delta_pct"),
        ({"chat_kl": 0.2}, "chat_kl"),
        ({"mc_retained": 0.9}, "mc_retained"),
        ({"refusal": 0.70}, "refusal"),  # 10 points below the base
        ({"over_refusal": 0.20}, "over_refusal"),
        ({"policy_passed": 0.83}, "policy_passed"),
        ({"understanding": 0.87}, "understanding"),  # reads worse than the serving model: no regression allowed
    ],
)
def test_each_budget_rejects_on_its_own(change, failing):
    decision = decide({**good_candidate(), **change}, serving_domain_nll=1.2, canary_hits=[], budgets=BUDGETS)
    assert not decision.promote
    assert [name for name, check in decision.checks.items() if not check["passed"]] == [failing]
    assert len(decision.reasons) == 1 and decision.reasons[0]


def test_a_canary_hit_blocks_promotion():
    decision = decide(good_candidate(), serving_domain_nll=1.2, canary_hits=["card number 4111…"], budgets=BUDGETS)
    assert not decision.promote and "canar" in decision.reasons[0]


def test_a_measure_that_was_not_run_is_no_evidence():
    retention = good_candidate()
    del retention["chat_kl"]
    decision = decide(retention, serving_domain_nll=1.2, canary_hits=[], budgets=BUDGETS)
    assert not decision.promote and decision.reasons == ["chat_kl: not measured"]


def test_the_understanding_check_applies_when_it_was_measured():
    retention = good_candidate()
    del retention["understanding"], retention["understanding_base"]  # INNKEEPER_GATE_UNDERSTANDING_DIALOGUES=0
    assert "understanding" not in decide(retention, serving_domain_nll=1.2, canary_hits=[], budgets=BUDGETS).checks
    asked = {**retention, "understanding": None, "understanding_base": None}  # asked for, dev set missing
    decision = decide(asked, serving_domain_nll=1.2, canary_hits=[], budgets=BUDGETS)
    assert not decision.promote and decision.reasons == ["understanding: not measured"]


def test_budgets_come_from_settings():
    from innkeeper.core.settings import Settings

    budgets = GateBudgets.from_settings(Settings(gate_max_chat_kl=0.5, gate_min_domain_gain=0.0))
    decision = decide(
        {**good_candidate(), "chat_kl": 0.3, "domain_nll": 1.2}, serving_domain_nll=1.2, canary_hits=[], budgets=budgets
    )
    assert decision.promote

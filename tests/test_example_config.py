"""tokenctl.example.yaml starts as shipped and shows every field the config accepts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tokenctl.cache.settings import CACHE_FIELDS
from tokenctl.config import SECTIONS, find_config_path, load_config
from tokenctl.policy.rules import APPROVAL_FIELDS, BUDGET_FIELDS, POLICY_FIELDS
from tokenctl.routing.settings import CLASSIFIER_FIELDS, ESCALATION_FIELDS, ROUTING_FIELDS, RULE_FIELDS, TIER_FIELDS

EXAMPLE = Path(__file__).resolve().parents[1] / "tokenctl.example.yaml"


def test_the_example_loads_when_copied_as_its_first_line_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(EXAMPLE, tmp_path / "tokenctl.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENCTL_CONFIG", raising=False)
    config = load_config(find_config_path(None))
    assert [p.name for p in config.providers] == ["anthropic", "openai", "local"]
    assert config.budgets and config.policies and config.approvals and config.routing.tiers


@pytest.mark.parametrize(
    "where, fields",
    [
        *SECTIONS.items(),
        ("budgets[]", BUDGET_FIELDS),
        ("policies[]", POLICY_FIELDS),
        ("approvals[]", APPROVAL_FIELDS),
        ("routing", ROUTING_FIELDS),
        ("routing.tiers", TIER_FIELDS),
        ("routing.rules[]", RULE_FIELDS),
        ("routing.classifier", CLASSIFIER_FIELDS),
        ("routing.escalation", ESCALATION_FIELDS),
        ("cache", CACHE_FIELDS),
    ],
)
def test_the_example_shows_every_field(where: str, fields: set[str]) -> None:
    text = EXAMPLE.read_text()
    missing = sorted(f for f in fields if not re.search(rf"(^|[\s{{,#]){re.escape(f)}:", text, re.M))
    assert missing == [], f"{where}: add these fields to tokenctl.example.yaml"
